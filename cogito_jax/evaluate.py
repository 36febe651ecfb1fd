"""Benchmark evaluation: ``python -m cogito_jax.evaluate {score,report,run}``.

``score`` applies the benchmark's official rule to a prediction file (the challenge format: JSONL with
``id``, ``answer_prediction``, optional ``thinking_prediction``) and writes OUT.json with overall and
per-group accuracy, missing items (counted wrong) and bootstrap 95% CIs, the per-item verdicts beside it
(``<OUT stem>.items.jsonl``) and, for MMAR, ``official.jsonl`` for MMAR's own ``code/evaluation.py``.
``report`` turns one or two score files into report.md and PNG plots. Bad input exits with code 2
and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

from cogito_jax.config import usage_error
from cogito_jax.eval import benchmarks
from cogito_jax.eval.benchmarks import BenchmarkError, write_official
from cogito_jax.eval.score import score

__all__ = ["main", "write_official"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        usage_error(message)


def _score(args: argparse.Namespace) -> int:
    bench = benchmarks.get(args.benchmark)
    loaded = benchmarks.load(args.benchmark, args.meta, args.audio_dir, check_audio=args.audio_dir is not None)
    predictions = benchmarks.read_predictions(args.predictions)
    try:
        summary, verdicts = score(loaded.items, predictions, bench.rule, args.resamples, args.seed)
    except ValueError as e:
        raise BenchmarkError(f"{args.predictions}: {e} ({args.meta})") from None
    result = {"benchmark": bench.name, **summary}
    if args.audio_dir is not None:
        result["missing_audio"] = loaded.missing_audio
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    items_path = out.with_name(out.stem + ".items.jsonl")
    items_path.write_text("".join(json.dumps(v.to_dict(), ensure_ascii=False) + "\n" for v in verdicts))
    written = [out, items_path]
    if bench.name == "mmar":
        official = pathlib.Path(args.official) if args.official else out.with_name("official.jsonl")
        written.append(write_official([it.meta for it in loaded.items], predictions, official))
    o, ci = result["overall"], result["ci"]["overall"]
    print(f"{bench.name}: accuracy {100 * o['accuracy']:.2f}% ({o['correct']}/{o['total']}), 95% CI "
          f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}], missing {result['missing']['total']}; "
          f"wrote {', '.join(map(str, written))}")
    return 0


def _read_scores(path: str) -> dict:
    try:
        scores = json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
    if not isinstance(scores, dict) or "overall" not in scores:
        raise BenchmarkError(f"{path}: not a score file (no 'overall'); make one with `evaluate score`")
    return scores


def _report(args: argparse.Namespace) -> int:
    from cogito_jax.eval.report import write_report

    scores = _read_scores(args.scores)
    compare = _read_scores(args.compare) if args.compare else None
    names = args.names.split(",") if args.names else [pathlib.Path(args.scores).stem,
                                                      pathlib.Path(args.compare or "other").stem]
    if len(names) != 2:
        raise BenchmarkError(f"--names must be two comma-separated names, got {args.names!r}")
    written = write_report(scores, args.out, compare, names)
    print(f"report: wrote {', '.join(map(str, written))}")
    return 0


def _run(args: argparse.Namespace) -> int:
    usage_error("`evaluate run` is not available yet: it needs the checkpoint loader and the sampler "
                "(features -> generate -> predictions); sample predictions elsewhere and use `evaluate score`")
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The argparse front end with the ``score``, ``report`` and ``run`` subcommands."""
    p = _Parser(prog="python -m cogito_jax.evaluate", description="Score benchmark predictions and write reports.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{score,report,run}")
    s = sub.add_parser("score", help="score a prediction file against a benchmark's meta")
    s.add_argument("--benchmark", required=True, help=f"one of {', '.join(benchmarks.BENCHMARKS)}")
    s.add_argument("--meta", required=True, help="benchmark meta (JSONL or JSON array)")
    s.add_argument("--predictions", required=True, help="JSONL lines with id and answer_prediction")
    s.add_argument("--out", required=True, help="OUT.json to write")
    s.add_argument("--audio-dir", default=None, help="check audio files under this folder (reported, not fatal)")
    s.add_argument("--official", default=None, help="where to write official.jsonl (MMAR; default beside OUT)")
    s.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    s.set_defaults(fn=_score)
    r = sub.add_parser("report", help="report.md and plots from a score file, optionally against another")
    r.add_argument("--scores", required=True, help="OUT.json from `score`")
    r.add_argument("--compare", default=None, help="a second OUT.json to compare against")
    r.add_argument("--names", default=None, help="two comma-separated run names (default: file stems)")
    r.add_argument("--out", required=True, help="folder for report.md and the PNG plots")
    r.set_defaults(fn=_report)
    g = sub.add_parser("run", help="(not available yet) sample predictions with a model, then score them")
    g.add_argument("--benchmark", default="mmar")
    g.add_argument("--meta", default=None)
    g.add_argument("--checkpoint", default=None)
    g.add_argument("--out", default=None)
    g.set_defaults(fn=_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the subcommand; bad input -> one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (BenchmarkError, ValueError) as e:
        usage_error(" ".join(str(e).split()))
    except OSError as e:
        usage_error(f"{e.filename or ''}: {e.strerror or e}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
