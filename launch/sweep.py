"""Expand a sweep into named runs, run them (locally one after another, or print the commands for a
pod/cluster), and summarise each run's final metrics in a table.

    python launch/sweep.py --sweep configs/sweeps/tiny_lr.py --config configs/tiny.py --workdir W [--print_only]

A run that exits with ``errors.EXIT_PREEMPTED`` (SIGTERM: it saved a checkpoint and stopped) stops the sweep
with that status, so whatever restarts it (e.g. ``launch/tpu.py babysit``) reruns the same command: finished
runs resume at their last step and end at once, the preempted one continues. SIGTERM to the sweep is passed
on to the run in progress.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys

from etils import epath

from cogito_jax import jsonl
from cogito_jax.errors import EXIT_PREEMPTED, EXIT_USAGE
from cogito_jax.sweeps import load_sweep, run_name


def commands(sweep_spec: str, config: str, workdir: str, python: str = sys.executable,
             extra: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(run name, argv) for every run of the sweep."""
    out = []
    for overrides in load_sweep(sweep_spec):
        name = run_name(overrides)
        argv = [python, "-m", "cogito_jax.train", "--config", config, "--workdir", f"{workdir}/{name}",
                *(f"--config.{k}={v}" for k, v in overrides.items()), *(extra or [])]
        out.append((name, argv))
    return out


def summarize(workdir: str, names: list[str], keys: tuple[str, ...] = ("step", "loss", "eval_loss")) -> str:
    """A markdown table of each run's last logged value of ``keys`` (from its metrics.jsonl, local or gs://; a
    torn last line is left out, any other bad line raises ``JsonlError`` naming it)."""
    rows = []
    for name in names:
        last: dict = {}
        for row in jsonl.read(epath.Path(workdir) / name / "metrics.jsonl"):
            last.update(row)
        rows.append([name] + [_fmt(last.get(k)) for k in keys])
    head = "| run | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1) + "\n"
    return head + "".join("| " + " | ".join(r) + " |\n" for r in rows)


def run_one(argv: list[str]) -> int:
    """Runs one training command and returns its exit status; SIGTERM to the sweep is passed on to it."""
    proc = subprocess.Popen(argv)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="launch/sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", required=True, help="sweep file, path.py[:arg]")
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--print_only", action="store_true", help="print the commands (e.g. to feed launch/tpu.py)")
    a, extra = p.parse_known_args(argv)
    try:
        runs = commands(a.sweep, a.config, a.workdir, extra=extra)
    except ValueError as e:  # ConfigError is a ValueError
        p.error(str(e))
    failed = []
    for name, argv_run in runs:
        print(" ".join(shlex.quote(c) for c in argv_run), flush=True)
        if a.print_only:
            continue
        rc = run_one(argv_run)
        if rc == EXIT_PREEMPTED:
            print(f"sweep: run {name} was preempted (exit {rc}); stopping: rerun the same command to continue",
                  file=sys.stderr)
            return EXIT_PREEMPTED
        if rc != 0:
            failed.append(name)
    if a.print_only:
        return 0
    try:
        table = summarize(a.workdir, [n for n, _ in runs])
    except jsonl.JsonlError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    (epath.Path(a.workdir) / "sweep_summary.md").write_text(table)
    print(table)
    if failed:
        print(f"sweep: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
