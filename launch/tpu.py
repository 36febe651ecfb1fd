"""Cloud TPU launcher: create a slice, ship the code, run on every worker, babysit, delete.

    python launch/tpu.py create  --name N --zone Z --project P --accelerator v5p-64 [--spot|--reserved]
                                 [--queued] [--num_slices 2] [--runtime v2-alpha-tpuv5]
    python launch/tpu.py setup   --name N --zone Z --project P [--repo URL --ref REF]
    python launch/tpu.py run     --name N --zone Z --project P -- python -m cogito_jax.train --config ...
    python launch/tpu.py babysit --name N ... -- CMD   (recreates the slice after preemption and reruns
                                                       CMD, which resumes from its gs:// workdir, until it
                                                       exits 0; exit 2, bad input, is not retried)
    python launch/tpu.py delete  --name N --zone Z --project P [--queued]

``--dry_run`` prints every gcloud command instead of running it. Multi-slice jobs use queued resources
with ``--num_slices`` (nodes ``N-0``, ``N-1``, ...); JAX picks up the slices from the TPU metadata, and
``config.mesh.dcn_*`` lays the mesh across them.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

from cogito_jax.errors import EXIT_PREEMPTED, EXIT_USAGE

DEFAULT_RUNTIME = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
                   "v6e": "v2-alpha-tpuv6e"}


def runtime_for(accelerator: str) -> str:
    family = accelerator.rsplit("-", 1)[0]
    if family not in DEFAULT_RUNTIME:
        raise SystemExit(f"tpu.py: error: unknown accelerator type {accelerator!r}; pass --runtime explicitly "
                         f"(known families: {sorted(DEFAULT_RUNTIME)})")
    return DEFAULT_RUNTIME[family]


def _loc(a: argparse.Namespace) -> list[str]:
    return [f"--zone={a.zone}", f"--project={a.project}"]


def node_names(a: argparse.Namespace) -> list[str]:
    return [f"{a.name}-{i}" for i in range(a.num_slices)] if a.num_slices > 1 else [a.name]


def create_cmds(a: argparse.Namespace) -> list[list[str]]:
    runtime = a.runtime or runtime_for(a.accelerator)
    tier = ["--spot"] if a.spot else ["--reserved"] if a.reserved else []
    if a.queued or a.num_slices > 1:
        cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", a.name, *_loc(a),
               f"--accelerator-type={a.accelerator}", f"--runtime-version={runtime}"]
        if a.num_slices > 1:
            cmd += [f"--node-count={a.num_slices}", f"--node-prefix={a.name}"]
        else:
            cmd += [f"--node-id={a.name}"]
        return [cmd + tier]
    return [["gcloud", "compute", "tpus", "tpu-vm", "create", a.name, *_loc(a),
             f"--accelerator-type={a.accelerator}", f"--version={runtime}", *tier]]


def ssh_cmds(a: argparse.Namespace, command: str) -> list[list[str]]:
    return [["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *_loc(a), "--worker=all", f"--command={command}"]
            for node in node_names(a)]


def _default_repo() -> str | None:
    out = subprocess.run(["git", "config", "--get", "remote.origin.url"], capture_output=True, text=True)
    return out.stdout.strip() or None


def setup_command(a: argparse.Namespace) -> str:
    """Clone (or update) the repo on every worker and install it into a venv."""
    repo = a.repo or _default_repo()
    if not repo:
        raise SystemExit("tpu.py: error: no --repo given and this checkout has no 'origin' remote to clone from")
    repo, ref = shlex.quote(repo), shlex.quote(a.ref)
    return ("set -e; if [ -d cogito-jax ]; then git -C cogito-jax fetch -q origin; "
            f"else git clone -q {repo} cogito-jax; fi; "
            f"git -C cogito-jax checkout -q {ref}; cd cogito-jax; python3 -m venv .venv; "
            ".venv/bin/pip install -q -r requirements.txt -r launch/requirements-tpu.txt 'jax[tpu]'; "
            ".venv/bin/pip install -q --no-deps -e .")


def run_command(cmd: Sequence[str]) -> str:
    return "cd cogito-jax && " + " ".join(shlex.quote(c) for c in cmd)


def delete_cmds(a: argparse.Namespace) -> list[list[str]]:
    if a.queued or a.num_slices > 1:
        return [["gcloud", "compute", "tpus", "queued-resources", "delete", a.name, *_loc(a), "--force", "--quiet"]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", a.name, *_loc(a), "--quiet"]]


def state_cmd(a: argparse.Namespace) -> list[str]:
    if a.queued or a.num_slices > 1:
        return ["gcloud", "compute", "tpus", "queued-resources", "describe", a.name, *_loc(a),
                "--format=value(state.state)"]
    return ["gcloud", "compute", "tpus", "tpu-vm", "describe", a.name, *_loc(a), "--format=value(state)"]


def execute(cmds: list[list[str]], dry_run: bool, check: bool = True) -> int:
    rc = 0
    for cmd in cmds:
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
        if not dry_run:
            rc = subprocess.run(cmd, check=False).returncode
            if rc and check:
                return rc
    return rc


def babysit(a: argparse.Namespace, cmd: Sequence[str]) -> int:
    """Run CMD; whenever the slice is preempted or the run stops unfinished (``EXIT_PREEMPTED`` after SIGTERM, a
    crash, a lost connection), recreate the slice if needed and run again. Exit 0 ends it; so does exit 2 (bad
    input: a rerun would fail the same way)."""

    ready = {"READY", "ACTIVE"}
    for attempt in range(1, a.max_restarts + 2):
        print(f"# babysit attempt {attempt}", flush=True)
        if a.dry_run:
            print(" ".join(shlex.quote(c) for c in state_cmd(a)))
            execute(create_cmds(a) + ssh_cmds(a, setup_command(a)) + ssh_cmds(a, run_command(cmd)), True)
            return 0
        state = subprocess.run(state_cmd(a), capture_output=True, text=True).stdout.strip()
        if state not in ready:
            if state:
                execute(delete_cmds(a), False, check=False)
            if execute(create_cmds(a), False) or execute(ssh_cmds(a, setup_command(a)), False):
                time.sleep(a.retry_seconds)
                continue
        rc = execute(ssh_cmds(a, run_command(cmd)), False)
        if rc == 0:
            return 0
        if rc == EXIT_USAGE:
            print(f"tpu.py: error: the command exited with status {rc} (bad input); not running it again",
                  file=sys.stderr)
            return rc
        print(f"# babysit: the run {'was preempted' if rc == EXIT_PREEMPTED else f'exited with status {rc}'}; "
              "running it again", flush=True)
        time.sleep(a.retry_seconds)
    print(f"tpu.py: error: gave up after {a.max_restarts} restarts", file=sys.stderr)
    return 1


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    cmd: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["create", "setup", "run", "babysit", "delete"])
    p.add_argument("--name", required=True)
    p.add_argument("--zone", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--accelerator", default="v5p-8")
    p.add_argument("--runtime", default=None)
    p.add_argument("--num_slices", type=int, default=1)
    p.add_argument("--queued", action="store_true", help="use a queued resource")
    tier = p.add_mutually_exclusive_group()
    tier.add_argument("--spot", action="store_true")
    tier.add_argument("--reserved", action="store_true")
    p.add_argument("--repo", default=None, help="git URL the workers clone (default: this checkout's origin)")
    p.add_argument("--ref", default="main")
    p.add_argument("--max_restarts", type=int, default=20)
    p.add_argument("--retry_seconds", type=float, default=60.0)
    p.add_argument("--dry_run", action="store_true", help="print the gcloud commands, run nothing")
    a = p.parse_args(argv)
    if a.num_slices < 1:
        p.error(f"--num_slices={a.num_slices} must be >= 1")
    if a.action in ("run", "babysit") and not cmd:
        p.error(f"'{a.action}' needs a command after --, e.g. -- python -m cogito_jax.train --config ...")
    return a, cmd


def main(argv: Sequence[str] | None = None) -> int:
    a, cmd = parse(sys.argv[1:] if argv is None else argv)
    if a.action == "create":
        return execute(create_cmds(a), a.dry_run)
    if a.action == "setup":
        return execute(ssh_cmds(a, setup_command(a)), a.dry_run)
    if a.action == "run":
        return execute(ssh_cmds(a, run_command(cmd)), a.dry_run)
    if a.action == "delete":
        return execute(delete_cmds(a), a.dry_run)
    return babysit(a, cmd)


if __name__ == "__main__":
    raise SystemExit(main())
