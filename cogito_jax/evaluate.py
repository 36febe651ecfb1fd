"""Benchmark evaluation: ``python -m cogito_jax.evaluate {score,report,run}``.

``score`` applies the benchmark's official rule to a prediction file (the challenge format: JSONL with
``id``, ``answer_prediction``, optional ``thinking_prediction``; MMAU ``model_output``, MMSU ``response``)
and writes OUT.json with overall and per-group accuracy, missing items (counted wrong) and bootstrap 95%
CIs, the per-item verdicts beside it (``<OUT stem>.items.jsonl``) and, for MMAR,
``<OUT stem>.official.jsonl`` for MMAR's own ``code/evaluation.py``. ``report`` turns one or two score
files into report.md and PNG plots. ``run`` answers a benchmark with a model (an HF checkpoint folder, or
a run trained here) through the sampler, greedy by default with the challenge's baseline prompt,
optionally self-consistent over N samples, then scores and reports into its ``--out`` folder (with
``official.jsonl`` for MMAR). ``rubrics`` runs the MMAR-Rubrics protocol with a judge behind an
OpenAI-compatible endpoint or a local checkpoint; it exits with code 1 if the judge failed on an item,
unless ``--allow-failures``. Bad input exits with code 2 and one line on stderr, before anything is
written; every output file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
from collections import Counter
from collections.abc import Callable, Sequence

from cogito_jax import audio
from cogito_jax.cli import load_config
from cogito_jax.convert import load_hf
from cogito_jax.data import chat, tokenizer as toklib
from cogito_jax.errors import usage_error
from cogito_jax.eval import benchmarks, predict as predict_lib, rubrics
from cogito_jax.eval.benchmarks import BenchmarkError, write_atomic, write_official
from cogito_jax.eval.predict import load_model
from cogito_jax.eval.report import write_report
from cogito_jax.eval.score import check_known, is_correct, score
from cogito_jax.judge import EngineJudge, HttpJudge

__all__ = ["main", "write_official"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        usage_error(message)


def _number(kind: Callable[[str], float], ok: Callable[[float], bool], what: str) -> Callable[[str], float]:
    """An argparse type: ``kind(text)`` that satisfies ``ok``, else an error saying ``what`` is expected."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_POSITIVE_INT = _number(int, lambda v: v > 0, "an integer >= 1")
_NATURAL = _number(int, lambda v: v >= 0, "an integer >= 0")
_POSITIVE = _number(float, lambda v: v > 0, "a number > 0")
_NONNEGATIVE = _number(float, lambda v: v >= 0, "a number >= 0")


def _writable_parent(path: pathlib.Path, flag: str) -> None:
    """Raises BenchmarkError unless ``path``'s folder exists or can be created, and can be written."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BenchmarkError(f"{flag} {path}: {parent} is a file, not a folder; give a path inside a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BenchmarkError(f"{flag} {path}: {parent} is not writable; give a path in a writable folder")


def _out_file(value: str, flag: str = "--out") -> pathlib.Path:
    """``value`` as a file to write; a folder there or an unwritable place is a BenchmarkError."""
    path = pathlib.Path(value)
    if path.is_dir():
        raise BenchmarkError(f"{flag} {value} is a folder; give the path of a file to write")
    if path.exists() and not os.access(path, os.W_OK):
        raise BenchmarkError(f"{flag} {value} is not writable; give a path that can be written")
    _writable_parent(path, flag)
    return path


def _out_dir(value: str, flag: str = "--out") -> pathlib.Path:
    """``value`` as a folder to write into (created if missing); a file there is a BenchmarkError."""
    path = pathlib.Path(value)
    if path.exists() and not path.is_dir():
        raise BenchmarkError(f"{flag} {value} is a file; give a folder (it is created if missing)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise BenchmarkError(f"{flag} {value} is not writable; give a writable folder")
    else:
        _writable_parent(path, flag)
    return path


def _in_dir(value: str | None, flag: str) -> None:
    """Raises BenchmarkError unless ``value`` (if given) is an existing folder."""
    if value is not None and not pathlib.Path(value).is_dir():
        raise BenchmarkError(f"{flag} {value} is not a folder; give an existing folder")


def _hf_dir(value: str | None, flag: str) -> None:
    """Raises BenchmarkError unless ``value`` (if given) is a folder with an HF ``config.json``."""
    if value and not (pathlib.Path(value) / "config.json").is_file():
        raise BenchmarkError(f"{flag} {value} has no config.json; give an HF checkpoint folder")


def _dump(obj: object) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _score(args: argparse.Namespace) -> int:
    bench = benchmarks.get(args.benchmark)
    out = _out_file(args.out)
    items_path = out.with_name(out.stem + ".items.jsonl")
    if args.official and bench.name != "mmar":
        raise BenchmarkError(f"--official is written for --benchmark mmar only, not {bench.name!r}")
    official = None
    if bench.name == "mmar":
        official = _out_file(args.official, "--official") if args.official else out.with_name(
            out.stem + ".official.jsonl")
    _in_dir(args.audio_dir, "--audio-dir")
    loaded = benchmarks.load(args.benchmark, args.meta, args.audio_dir, check_audio=args.audio_dir is not None)
    predictions = benchmarks.read_predictions(args.predictions, bench.keys)
    try:
        summary, verdicts = score(loaded.items, predictions, bench.rule, args.resamples, args.seed, bench.keys)
    except ValueError as e:
        raise BenchmarkError(f"{args.predictions}: {e} ({args.meta})") from None
    result = {"benchmark": bench.name, **summary}
    if args.audio_dir is not None:
        result["missing_audio"] = loaded.missing_audio
    written = [write_atomic(items_path, "".join(json.dumps(v.to_dict(), ensure_ascii=False) + "\n"
                                                for v in verdicts))]
    if official is not None:
        written.append(write_official([it.meta for it in loaded.items], predictions, official))
    written.insert(0, write_atomic(out, _dump(result)))  # last: its presence means the others are complete
    o, a, ci = result["overall"], result["answered"], result["ci"]["overall"]
    print(f"{bench.name}: accuracy {100 * o['accuracy']:.2f}% ({o['correct']}/{o['total']}), 95% CI "
          f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}], missing {result['missing']['total']}, unparsed "
          f"{result['unparsed']['total']}; official script {100 * a['accuracy']:.2f}% ({a['correct']}/{a['total']}); "
          f"wrote {', '.join(map(str, written))}")
    return 0


def _read_scores(path: str) -> dict:
    try:
        scores = json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
    except IsADirectoryError:
        raise BenchmarkError(f"{path} is a folder; give a score file made by `evaluate score`") from None
    except UnicodeDecodeError as e:
        raise BenchmarkError(f"{path}: not UTF-8 text ({e.reason}); give a score file made by `evaluate score`") \
            from None
    overall = scores.get("overall") if isinstance(scores, dict) else None
    if not isinstance(overall, dict) or not {"correct", "total", "accuracy"} <= set(overall):
        raise BenchmarkError(f"{path}: not a score file (no 'overall' with correct, total, accuracy); make one "
                             f"with `evaluate score`")
    return scores


def _report(args: argparse.Namespace) -> int:
    out = _out_dir(args.out)
    names = args.names.split(",") if args.names else [pathlib.Path(args.scores).stem,
                                                      pathlib.Path(args.compare or "other").stem]
    if len(names) != 2 or not all(n.strip() for n in names):
        raise BenchmarkError(f"--names must be two non-empty comma-separated names, got {args.names!r}")
    scores = _read_scores(args.scores)
    compare = _read_scores(args.compare) if args.compare else None
    written = write_report(scores, out, compare, names)
    print(f"report: wrote {', '.join(map(str, written))}")
    return 0


def _load_model(args: argparse.Namespace):
    """(model, tokenizer, family, max_frames, n_mels) from an HF checkpoint folder or a trained run."""
    if bool(args.checkpoint) == bool(args.workdir):
        raise BenchmarkError("give exactly one of --checkpoint HF_DIR or --workdir RUN (with --config)")
    if args.workdir and not args.config:
        raise BenchmarkError("--workdir needs --config (the run's config file)")
    if args.workdir and not (pathlib.Path(args.workdir) / "checkpoints").is_dir():
        raise BenchmarkError(f"--workdir {args.workdir} has no checkpoints/ folder; give the workdir of a run "
                             f"trained with `python -m cogito_jax.train`")
    _hf_dir(args.checkpoint, "--checkpoint")
    cfg = load_config(args.config, args.override or ()) if args.workdir else None
    model, tok, mcfg = load_model(checkpoint=args.checkpoint, workdir=args.workdir, cfg=cfg)
    return model, tok, mcfg.family, mcfg.audio.num_frames, mcfg.audio.num_mel_bins


def _run(args: argparse.Namespace) -> int:
    """Features -> generate -> split thinking/answer -> challenge-format predictions -> scores + report."""
    from tqdm.auto import tqdm

    bench = benchmarks.get(args.benchmark)
    out = _out_dir(args.out)
    _in_dir(args.audio_dir, "--audio-dir")
    loaded = benchmarks.load(args.benchmark, args.meta, args.audio_dir, check_audio=True)
    model, tok, family, max_frames, n_mels = _load_model(args)
    out.mkdir(parents=True, exist_ok=True)
    missing = {m["id"] for m in loaded.missing_audio}
    items, failed = [], []
    for it in tqdm(loaded.items, desc="log-mel", unit="clip"):
        if it.id in missing:
            continue
        try:
            wave, _ = audio.decode(it.audio_path)
        except audio.AudioError as e:
            failed.append({"id": it.id, "reason": str(e)})
            continue
        wave = wave[: max_frames * audio.HOP]  # the encoder's window (30 s for the released models)
        items.append({"id": it.id, "question": it.question, "choices": it.choices, "answer": it.answer,
                      "mel": audio.log_mel_frames(wave, n_mels).T})
    system = chat.SYSTEMS[args.system]
    rows = predict_lib.predict(model, tok, family, items, out / "samples.jsonl", max_frames=max_frames, n_mels=n_mels,
                               batch_size=args.batch_size, num_samples=args.num_samples,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                               system=system)
    predictions = {}
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    for rid, samples in by_id.items():
        pick = samples[0]
        if len(samples) > 1:  # self-consistency: the most frequent answer, first sample giving it
            common = Counter(s["answer"] for s in samples).most_common(1)[0][0]
            pick = next(s for s in samples if s["answer"] == common)
        predictions[rid] = {"id": rid, "thinking_prediction": pick["thinking"][:9999],
                            "answer_prediction": pick["answer"]}
    write_atomic(out / "predictions.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n"
                                                    for p in predictions.values()))
    summary, _ = score(loaded.items, predictions, bench.rule, args.resamples, args.seed, bench.keys)
    result = {"benchmark": bench.name, **summary, "missing_audio": loaded.missing_audio + failed}
    if bench.name == "mmar":
        write_official([it.meta for it in loaded.items], predictions, out / "official.jsonl")
    write_report(result, out / "report")
    write_atomic(out / "scores.json", _dump(result))
    o = result["overall"]
    print(f"{bench.name}: accuracy {100 * o['accuracy']:.2f}% ({o['correct']}/{o['total']}), "
          f"{len(result['missing_audio'])} without usable audio; wrote {out}")
    return 0


def _rubrics(args: argparse.Namespace) -> int:
    """MMAR-Rubrics: the judge grades correctly answered items' reasoning (5 runs, middle-3 mean, CRS)."""
    if bool(args.judge_url) == bool(args.judge_checkpoint):
        raise BenchmarkError("give exactly one of --judge-url (OpenAI-compatible) or --judge-checkpoint (local)")
    _hf_dir(args.judge_checkpoint, "--judge-checkpoint")
    out = _out_file(args.out)
    mmar = benchmarks.get("mmar")
    meta = [it.meta for it in benchmarks.load("mmar", args.meta, check_audio=False).items]
    rubrics.check_rubrics(meta, args.meta)
    predictions = benchmarks.read_predictions(args.predictions, mmar.keys)
    try:
        check_known((str(m["id"]) for m in meta), predictions)
    except ValueError as e:
        raise BenchmarkError(f"{args.predictions}: {e} ({args.meta})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.judge_url:
        judge = HttpJudge(args.judge_url, args.judge_model, timeout_s=args.timeout, max_retries=args.retries,
                          requests_per_s=args.rate, cache_path=out.with_suffix(".judge_cache.jsonl"))
    else:
        model, mcfg = load_hf(args.judge_checkpoint)
        judge = EngineJudge(model, toklib.load(args.judge_checkpoint), mcfg.family)
    result = rubrics.score_rubrics(meta, predictions, judge, is_correct)
    result["judge_stats"] = judge.stats
    write_atomic(out, _dump(result))
    failed = result["failed"]
    print(f"mmar-rubrics: {result['rubric_score']:.2f} over {result['scored']} of {result['total']} items "
          f"(accuracy {100 * result['accuracy']:.2f}% = {result['correct']}/{result['total']}, CRS "
          f"{result['crs']:.3f}); {failed['count']} judge failure(s); wrote {out}")
    if failed["count"] and not args.allow_failures:
        shown = ", ".join(failed["ids"][:5]) + (", ..." if failed["count"] > 5 else "")
        print(f"mmar-rubrics: the judge failed on {failed['count']} correct item(s) ({shown}), left out of the "
              f"rubric score; rerun to retry them (good replies are cached) or pass --allow-failures",
              file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse front end with the ``score``, ``report`` and ``run`` subcommands."""
    p = _Parser(prog="python -m cogito_jax.evaluate", description="Score benchmark predictions and write reports.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{score,report,run,rubrics}")
    s = sub.add_parser("score", help="score a prediction file against a benchmark's meta")
    s.add_argument("--benchmark", required=True, help=f"one of {', '.join(benchmarks.BENCHMARKS)}")
    s.add_argument("--meta", required=True, help="benchmark meta (JSONL or JSON array)")
    s.add_argument("--predictions", required=True, help="JSONL lines with id and answer_prediction")
    s.add_argument("--out", required=True, help="OUT.json to write")
    s.add_argument("--audio-dir", default=None, help="check audio files under this folder (reported, not fatal)")
    s.add_argument("--official", default=None,
                   help="where to write the JSONL for MMAR's code/evaluation.py (default <OUT stem>.official.jsonl)")
    s.add_argument("--resamples", type=_POSITIVE_INT, default=1000, help="bootstrap resamples for the 95%% CIs")
    s.add_argument("--seed", type=_NATURAL, default=0, help="bootstrap seed")
    s.set_defaults(fn=_score)
    r = sub.add_parser("report", help="report.md and plots from a score file, optionally against another")
    r.add_argument("--scores", required=True, help="OUT.json from `score`")
    r.add_argument("--compare", default=None, help="a second OUT.json to compare against")
    r.add_argument("--names", default=None, help="two comma-separated run names (default: file stems)")
    r.add_argument("--out", required=True, help="folder for report.md and the PNG plots")
    r.set_defaults(fn=_report)
    g = sub.add_parser("run", help="answer a benchmark with a model (resumable), then score and report")
    g.add_argument("--benchmark", default="mmar", help=f"one of {', '.join(benchmarks.BENCHMARKS)}")
    g.add_argument("--meta", required=True, help="benchmark meta (JSONL or JSON array)")
    g.add_argument("--audio-dir", "--audio_dir", dest="audio_dir", default=None, help="audio folder")
    g.add_argument("--out", required=True, help="output folder: samples, predictions, scores, official, report")
    g.add_argument("--checkpoint", default=None, help="HF checkpoint folder (config.json, safetensors, tokenizer)")
    g.add_argument("--workdir", default=None, help="a run trained with `python -m cogito_jax.train`")
    g.add_argument("--config", default=None, help="that run's config file (with --workdir)")
    g.add_argument("--override", action="append", help="config override a.b=v for --config (repeatable)")
    g.add_argument("--system", choices=list(chat.SYSTEMS), default="challenge",
                   help="system prompt: the challenge baseline's, the chat template's default, or none")
    g.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=_POSITIVE_INT, default=1024)
    g.add_argument("--num-samples", "--num_samples", dest="num_samples", type=_POSITIVE_INT, default=1,
                   help="> 1: self-consistency (majority answer over samples)")
    g.add_argument("--temperature", type=_NONNEGATIVE, default=0.0)
    g.add_argument("--batch-size", "--batch_size", dest="batch_size", type=_POSITIVE_INT, default=8)
    g.add_argument("--resamples", type=_POSITIVE_INT, default=1000)
    g.add_argument("--seed", type=_NATURAL, default=0)
    g.set_defaults(fn=_run)
    j = sub.add_parser("rubrics", help="MMAR-Rubrics: an LLM judge grades the reasoning of correct answers")
    j.add_argument("--meta", required=True, help="MMAR meta with 'rubric' and 'thinking'")
    j.add_argument("--predictions", required=True, help="JSONL with id, answer_prediction, thinking_prediction")
    j.add_argument("--out", required=True, help="JSON to write (a judge cache is kept beside it)")
    j.add_argument("--judge-url", "--judge_url", dest="judge_url", default=None,
                   help="OpenAI-compatible base URL, e.g. http://host:8000/v1 (key from OPENAI_API_KEY)")
    j.add_argument("--judge-model", "--judge_model", dest="judge_model", default="gpt-4o-2024-11-20")
    j.add_argument("--judge-checkpoint", "--judge_checkpoint", dest="judge_checkpoint", default=None,
                   help="a local HF checkpoint folder to judge with through the sampler")
    j.add_argument("--timeout", type=_POSITIVE, default=60.0, help="seconds for one judge request")
    j.add_argument("--retries", type=_NATURAL, default=5)
    j.add_argument("--rate", type=_NONNEGATIVE, default=0.0, help="max requests per second (0 = no limit)")
    j.add_argument("--allow-failures", "--allow_failures", dest="allow_failures", action="store_true",
                   help="exit 0 even if the judge failed on some items (they are listed in OUT)")
    j.set_defaults(fn=_rubrics)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the subcommand; bad input -> one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (BenchmarkError, ValueError) as e:
        usage_error(" ".join(str(e).split()))
    except OSError as e:
        usage_error(f"{e.filename}: {e.strerror or e}" if e.filename else str(e))
    return 2


if __name__ == "__main__":
    sys.exit(main())
