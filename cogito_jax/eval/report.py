"""Evaluation reports: ``report.md`` (per-group tables with 95% CIs, published numbers) and PNG plots."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cogito_jax.eval.benchmarks import write_atomic

PUBLISHED = pathlib.Path(__file__).with_name("published.json")
ORDER = {
    "category": ["Signal Layer", "Perception Layer", "Semantic Layer", "Cultural Layer"],
    "modality": ["sound", "music", "speech", "mix-sound-music", "mix-sound-speech", "mix-music-speech",
                 "mix-sound-music-speech"],
}
NOT_GROUPS = ("overall", "answered", "answered_groups", "missing", "unparsed", "ci")


def load_published(path: str | pathlib.Path = PUBLISHED) -> dict[str, list[dict[str, Any]]]:
    """Benchmark -> published results ({model, accuracy in %, source, ...})."""
    return json.loads(pathlib.Path(path).read_text())


def group_keys(scores: Mapping[str, Any]) -> list[str]:
    """The breakdown keys of a score file (``modality``, ``category``, ``sub-category``, extras)."""
    return [k for k, v in scores.items() if k not in NOT_GROUPS and isinstance(v, dict)
            and all(isinstance(g, dict) and "total" in g for g in v.values())]


def ordered(key: str, names: Sequence[str]) -> list[str]:
    """Group names in the benchmark's natural order where one is known, else sorted."""
    pref = ORDER.get(key, [])
    return [n for n in pref if n in names] + sorted(n for n in names if n not in pref)


def _ci(scores: Mapping[str, Any], key: str, name: str | None = None) -> list[float] | None:
    ci = scores.get("ci", {}).get(key)
    return ci if name is None else (ci or {}).get(name)


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}"


def _ci_text(ci: Sequence[float] | None) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "-"


def table(scores: Mapping[str, Any], key: str, other: Mapping[str, Any] | None = None,
          names: Sequence[str] = ("this run", "other")) -> str:
    """Markdown table of one breakdown: n, correct, accuracy %, 95% CI, missing (and the other run's)."""
    groups = scores.get(key, {})
    other_groups = (other or {}).get(key, {})
    head = f"| {key} | n | correct | acc % | 95% CI | missing |"
    rule = "|---|---:|---:|---:|---|---:|"
    if other is not None:
        head += f" {names[1]} acc % | {names[1]} 95% CI | Δ pts |"
        rule += "---:|---|---:|"
    lines = [head, rule]
    for name in ordered(key, list(set(groups) | set(other_groups))):
        g = groups.get(name)
        if g:
            missing = scores.get("missing", {}).get(key, {}).get(name, 0)
            row = (f"| {name} | {g['total']} | {g['correct']} | {_pct(g['accuracy'])} | "
                   f"{_ci_text(_ci(scores, key, name))} | {missing} |")
        else:
            row = f"| {name} | 0 | - | - | - | - |"
        if other is not None:
            o = other_groups.get(name)
            if o:
                delta = f"{100.0 * (g['accuracy'] - o['accuracy']):+.1f}" if g else "-"
                row += f" {_pct(o['accuracy'])} | {_ci_text(_ci(other, key, name))} | {delta} |"
            else:
                row += " - | - | - |"
        lines.append(row)
    return "\n".join(lines)


def markdown(scores: Mapping[str, Any], compare: Mapping[str, Any] | None = None,
             names: Sequence[str] = ("this run", "other"),
             published: Mapping[str, list[dict[str, Any]]] | None = None) -> str:
    """The whole report: overall, published comparison, and one table per breakdown."""
    bench = scores.get("benchmark", "mmar")
    o, ci = scores["overall"], _ci(scores, "overall")
    out = [f"# {bench.upper()} evaluation: {names[0]}", "",
           f"Overall accuracy **{_pct(o['accuracy'])} %** ({o['correct']}/{o['total']}), 95% bootstrap CI "
           f"{_ci_text(ci)}; items without a prediction count as wrong "
           f"({scores.get('missing', {}).get('total', 0)} missing)."]
    if "answered" in scores:
        a = scores["answered"]
        unparsed = scores.get("unparsed", {}).get("total", 0)
        out.append(f"Over answered items only (what the official script reports): {_pct(a['accuracy'])} % "
                   f"({a['correct']}/{a['total']})" + (f"; {unparsed} responses it cannot read left out." if unparsed
                                                       else "."))
    if compare is not None:
        c = compare["overall"]
        out.append(f"{names[1]}: {_pct(c['accuracy'])} % ({c['correct']}/{c['total']}), CI "
                   f"{_ci_text(_ci(compare, 'overall'))}; difference "
                   f"{100.0 * (o['accuracy'] - c['accuracy']):+.1f} points.")
    rows = (published if published is not None else load_published()).get(bench, [])
    if rows:
        out += ["", "## Published results", "", "| model | acc % | rubrics | Δ pts (this run − it) | source |",
                "|---|---:|---:|---:|---|", f"| **{names[0]}** | {_pct(o['accuracy'])} {_ci_text(ci)} | - | - | - |"]
        for r in sorted(rows, key=lambda r: -r["accuracy"]):
            out.append(f"| {r['model']} | {r['accuracy']:.1f} | {r.get('rubrics', '-')} | "
                       f"{100.0 * o['accuracy'] - r['accuracy']:+.1f} | {r['source']} |")
    for key in group_keys(scores):
        out += ["", f"## By {key}", "", table(scores, key, compare, names)]
    return "\n".join(out) + "\n"


def _bars(ax, x, accs, cis, width, label, offset=0.0):
    accs = np.asarray(accs) * 100.0
    lo = np.array([a - 100.0 * c[0] if c else 0.0 for a, c in zip(accs, cis, strict=True)])
    hi = np.array([100.0 * c[1] - a if c else 0.0 for a, c in zip(accs, cis, strict=True)])
    ax.bar(np.asarray(x) + offset, accs, width, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], capsize=3,
           label=label)


def plot_groups(scores: Mapping[str, Any], key: str, path: str | pathlib.Path, title: str = "") -> pathlib.Path:
    """Bar chart of accuracy per group of ``key`` with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ordered(key, list(scores[key]))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2), 4.0))
    _bars(ax, range(len(names)), [scores[key][n]["accuracy"] for n in names],
          [_ci(scores, key, n) for n in names], 0.7, None)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.set_title(title or f"accuracy by {key}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return pathlib.Path(path)


def plot_compare(a: Mapping[str, Any], b: Mapping[str, Any], names: Sequence[str],
                 path: str | pathlib.Path) -> pathlib.Path:
    """Side-by-side accuracy (with 95% CIs) of two score files: overall, per layer, per modality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, refs = ["overall"], [("overall", None)]
    for key in ("category", "modality"):
        for n in ordered(key, list(set(a.get(key, {})) | set(b.get(key, {})))):
            labels.append(n)
            refs.append((key, n))

    def acc(s, key, n):
        g = s.get(key) if n is None else s.get(key, {}).get(n)
        return g["accuracy"] if g else 0.0

    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(labels) + 2), 4.0))
    x = list(range(len(labels)))
    for i, s in enumerate((a, b)):
        _bars(ax, x, [acc(s, k, n) for k, n in refs], [_ci(s, k, n) for k, n in refs], 0.4, names[i],
              offset=(i - 0.5) * 0.4)
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title(f"{names[0]} vs {names[1]}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return pathlib.Path(path)


def write_report(scores: Mapping[str, Any], out_dir: str | pathlib.Path, compare: Mapping[str, Any] | None = None,
                 names: Sequence[str] = ("this run", "other")) -> list[pathlib.Path]:
    """Writes one ``accuracy_<key>.png`` per breakdown, ``compare.png`` and then report.md; returns the paths."""

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(scores, compare, names)
    plots = []
    for key in group_keys(scores):
        if scores[key]:
            plots.append(plot_groups(scores, key, out_dir / f"accuracy_{key.replace('/', '_')}.png",
                                     f"{names[0]}: by {key}"))
    if compare is not None:
        plots.append(plot_compare(scores, compare, names, out_dir / "compare.png"))
    return [write_atomic(out_dir / "report.md", text), *plots]
