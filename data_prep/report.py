"""The build report: ``report.json`` (contract 6), ``report.md`` and PNG plots of what was kept and why
the rest was rejected. With model stages, ``stages`` holds each one's counts and rejection reasons
(``annotate``: clips, questions written / valid, reasons; ``think``: questions, samples, generated this run;
``audit``: traces accepted / rejected / waiting for the judge, reasons per trace, questions kept)."""

from __future__ import annotations

import collections
import json
import pathlib
from typing import Any


def summarize(items: list[dict], kept: list[dict], rejected: list[dict], audio_rows: dict[str, dict],
              times: dict[str, float], dataset_dir: pathlib.Path | None, stages: dict[str, Any] | None = None,
              processed: int = 0) -> dict[str, Any]:
    """The report of a build: ``items`` as read from the source, ``kept`` records' items (a question item
    names its clip in ``clip_id``), every rejection, the per-clip audio rows, stage seconds, model-stage reports,
    and how many clips this run decoded (``processed``; the others came from the cache)."""
    reasons = collections.Counter(r["reason"].split(":")[0] for r in rejected)
    clips = dict.fromkeys(i.get("clip_id", i["id"]) for i in kept)
    seconds = [audio_rows[c]["seconds"] for c in clips if c in audio_rows]
    return {
        "kept": len(kept),
        "rejected": rejected,
        "counts": {"manifest_items": len(items), "kept": len(kept), "rejected": len(rejected),
                   "rejected_by_reason": dict(reasons), "audio_processed_this_run": processed},
        "durations": {"total_seconds": round(sum(seconds), 2), "min_seconds": min(seconds, default=0.0),
                      "max_seconds": max(seconds, default=0.0), "clip_seconds": [round(s, 3) for s in seconds]},
        "modality": dict(collections.Counter(i.get("modality") or "unknown" for i in kept)),
        "category": dict(collections.Counter(i.get("category") or "unknown" for i in kept)),
        "stage_seconds": {k: round(v, 3) for k, v in times.items()},
        "stages": dict(stages or {}),
        "dataset_dir": str(dataset_dir) if dataset_dir else None,
    }


def write(report: dict[str, Any], out: pathlib.Path) -> None:
    """``report.json``, ``report.md`` and ``plots/*.png``."""
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plots = _plots(report, out / "plots")
    c = report["counts"]
    lines = [
        "# Cogito-pipe build report", "",
        f"Kept **{c['kept']}** of {c['kept'] + c['rejected']} items; rejected {c['rejected']}.", "",
        "| rejection reason | count |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(c["rejected_by_reason"].items(), key=lambda kv: -kv[1])], "",
        "| modality | kept |", "|---|---|", *[f"| {k} | {v} |" for k, v in sorted(report["modality"].items())], "",
        "| stage | seconds |", "|---|---|", *[f"| {k} | {v} |" for k, v in report["stage_seconds"].items()], "",
        *_stage_lines(report.get("stages") or {}),
        *[f"![{p.stem}](plots/{p.name})" for p in plots],
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _stage_lines(stages: dict[str, Any]) -> list[str]:
    """A section per model stage: its counts, then its rejection reasons."""
    lines = []
    for name, rep in stages.items():
        lines += [f"## {name}", "", "| count | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rep.items() if not isinstance(v, dict)]
        reasons = rep.get("rejected_by_reason") or {}
        if reasons:
            lines += ["", f"| {name}: rejection reason | count |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])]
        lines.append("")
    return lines


def _plots(report: dict[str, Any], folder: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].hist(report["durations"]["clip_seconds"] or [0], bins=30, color="#4c72b0")
    axes[0].set(title="kept clip durations", xlabel="seconds", ylabel="clips")
    for ax, key, title in ((axes[1], "modality", "kept by modality"),):
        names, counts = zip(*sorted(report[key].items()), strict=True) if report[key] else ((), ())
        ax.barh(names, counts, color="#55a868")
        ax.set(title=title, xlabel="clips")
    reasons = report["counts"]["rejected_by_reason"]
    names, counts = zip(*sorted(reasons.items(), key=lambda kv: kv[1]), strict=True) if reasons else ((), ())
    axes[2].barh(names, counts, color="#c44e52")
    axes[2].set(title="rejections by reason", xlabel="items")
    fig.tight_layout()
    path = folder / "build_summary.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    out.append(path)
    return out
