"""The build report: ``report.json`` (contract 6), ``report.md`` and PNG plots of what was kept and why
the rest was rejected."""

from __future__ import annotations

import collections
import json
import pathlib
from typing import Any


def summarize(items: list[dict], kept: list[dict], rejected: list[dict], audio_rows: dict[str, dict],
              times: dict[str, float], dataset_dir: pathlib.Path) -> dict[str, Any]:
    reasons = collections.Counter(r["reason"].split(":")[0] for r in rejected)
    seconds = [audio_rows[i["id"]]["seconds"] for i in kept if i["id"] in audio_rows]
    return {
        "kept": len(kept),
        "rejected": rejected,
        "counts": {"manifest_items": len(items), "kept": len(kept), "rejected": len(rejected),
                   "rejected_by_reason": dict(reasons)},
        "durations": {"total_seconds": round(sum(seconds), 2), "min_seconds": min(seconds, default=0.0),
                      "max_seconds": max(seconds, default=0.0), "clip_seconds": [round(s, 3) for s in seconds]},
        "modality": dict(collections.Counter(i.get("modality") or "unknown" for i in kept)),
        "category": dict(collections.Counter(i.get("category") or "unknown" for i in kept)),
        "stage_seconds": {k: round(v, 3) for k, v in times.items()},
        "dataset_dir": str(dataset_dir),
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
        *[f"![{p.stem}](plots/{p.name})" for p in plots],
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")


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
