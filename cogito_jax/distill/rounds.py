"""Multi-round self-distillation (rejection-sampling fine-tuning on the model's own audited reasoning).

    sft -> eval_0 -> [ sample_r -> select_r -> train_r -> eval_r ] for r = 1..R

``sample``: the current model answers every pool question ``num_samples`` times at temperature T,
under ``orders`` different choice orders, without seeing the key. ``select``: each trace is scored
(format, one named choice, MMAR-correct, the thinking's conclusion agrees, length) and each prompt's
traces are selected (pass rate, option-shuffle guard, near-duplicates, at most K); every decision is
written to ``decisions.jsonl`` and the kept traces become a records dataset. ``train``: fine-tune from
the base (SFT) checkpoint, or from the previous round, on the union of all accepted data so far (plus
the seed data when ``include_seed``). ``eval``: greedy accuracy on the held-out set.

Every stage writes its outputs before it is marked done in ``W/rounds.json``; a restarted run skips
finished stages and a stage interrupted midway resumes (sampling and training are themselves
resumable), so a crash in round 2's sampling restarts there.
"""

from __future__ import annotations

import collections
import copy
import json
import pathlib
from typing import Any

import numpy as np

from cogito_jax.data import prepare, records
from cogito_jax.distill.scoring import ScoreConfig, score_trace
from cogito_jax.distill.select import Sample, SelectConfig, select
from cogito_jax.eval import predict as predict_lib
from cogito_jax.eval.score import is_correct
from cogito_jax.log import logger


class State:
    """``rounds.json``: which stages are done and each round's summary."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"done": [], "rounds": {}}

    def done(self, stage: str) -> bool:
        return stage in self.data["done"]

    def mark(self, stage: str, **summary: Any) -> None:
        if summary:
            self.data["rounds"].setdefault(stage.split("_")[-1], {}).update(summary)
        if stage not in self.data["done"]:
            self.data["done"].append(stage)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)


def _train(*args: Any, **kwargs: Any) -> None:
    """A training stage; a preempted one stops the whole job (exit 0) so it is never marked done."""
    from cogito_jax.train.run import train

    if train(*args, **kwargs).get("preempted"):
        logger.warning("training was preempted: stopping; a restart resumes this stage from its checkpoint")
        raise SystemExit(0)


def _stage_cfg(cfg: Any, steps: int, data_dir: str | None = None) -> Any:
    c = copy.deepcopy(cfg)
    c.train.steps = steps
    if data_dir is not None:
        c.data.source, c.data.dir = "records", data_dir
    return c


def _evaluate(cfg: Any, run_dir: pathlib.Path, heldout: pathlib.Path, out: pathlib.Path, limit: int) -> dict:
    from cogito_jax.train.run import load_trained

    model, tok, mcfg = load_trained(cfg, run_dir)
    items = predict_lib.items_from_records(records.RecordSource(heldout, "train"), limit=limit or None)
    rows = predict_lib.predict(model, tok, mcfg.family, items, out, max_frames=mcfg.audio.num_frames,
                               n_mels=mcfg.audio.num_mel_bins, batch_size=cfg.distill.batch_size,
                               max_new_tokens=cfg.distill.max_new_tokens)
    summary = predict_lib.score_predictions(items, rows)
    o = summary["overall"]
    return {"accuracy": o["accuracy"], "n": o["total"], "ci": summary["ci"]["overall"],
            "category": {k: v["accuracy"] for k, v in summary["category"].items()}}


def _sample(cfg: Any, run_dir: pathlib.Path, pool: pathlib.Path, out_dir: pathlib.Path, rnd: int) -> list[dict]:
    from cogito_jax.train.run import load_trained

    d = cfg.distill
    model, tok, mcfg = load_trained(cfg, run_dir)
    source = records.RecordSource(pool, "train")
    per_order = max(d.num_samples // d.orders, 1)
    rows = []
    for k in range(d.orders):
        items = predict_lib.items_from_records(source, limit=d.pool_size or None, order_seed=1000 * rnd + k)
        got = predict_lib.predict(model, tok, mcfg.family, items, out_dir / f"samples_order{k}.jsonl",
                                  max_frames=mcfg.audio.num_frames, n_mels=mcfg.audio.num_mel_bins,
                                  batch_size=d.batch_size, num_samples=per_order, temperature=d.temperature,
                                  max_new_tokens=d.max_new_tokens, seed=cfg.seed + 7919 * rnd + k)
        shown = {it["id"]: it["choices"] for it in items}
        rows += [{**r, "order": k, "choices": shown[r["id"]]} for r in got]
    return rows


def _select(cfg: Any, rows: list[dict], pool: pathlib.Path, out_dir: pathlib.Path) -> tuple[list[dict], dict]:
    d = cfg.distill
    scfg = ScoreConfig(min_thinking_chars=d.min_thinking_chars, max_thinking_chars=d.max_thinking_chars)
    selcfg = SelectConfig(max_per_prompt=d.max_per_prompt, min_orders_correct=min(2, d.orders),
                          all_right_weight=d.all_right_weight)
    pool_recs = {rec["id"]: rec for rec in records.RecordSource(pool, "train")}  # each record decoded once
    per_prompt: dict[str, list[tuple[dict, Sample]]] = collections.defaultdict(list)
    for j, r in enumerate(rows):
        v = score_trace(r["text"], r["choices"], pool_recs[r["id"]]["answer"], is_correct, scfg)
        per_prompt[r["id"]].append((r, Sample(index=j, verdict=v, order=(r["order"],))))
    kept, stats = [], collections.Counter()
    hist = collections.Counter()
    with open(out_dir / "decisions.jsonl", "w") as f:
        for pid, pairs in per_prompt.items():
            dec = select(pid, [s for _, s in pairs], selcfg)
            f.write(json.dumps(dec.to_dict()) + "\n")
            stats[dec.status] += 1
            hist[round(dec.pass_rate, 2)] += 1
            rec = pool_recs[pid]
            for r, s in pairs:
                if s.index in dec.kept:
                    kept.append(records.make_record(
                        id=f"{pid}#s{s.index}", mel=rec["mel"], n_frames=rec["n_frames"], question=rec["question"],
                        choices=r["choices"], answer=rec["answer"], thinking=s.verdict.thinking, weight=dec.weight,
                        source=rec.get("source", ""), modality=rec.get("modality", ""),
                        category=rec.get("category", ""), sub_category=rec.get("sub_category", ""),
                        provenance={"distilled_from": pid, "sample": s.index, "order": r["order"]}))
    summary = {"prompts": len(per_prompt), "accepted_traces": len(kept), "status": dict(stats),
               "pass_rate_histogram": {str(k): v for k, v in sorted(hist.items())}}
    return kept, summary


def run(cfg: Any, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Runs (or resumes) every stage; returns the ``rounds.json`` content."""
    w = pathlib.Path(workdir)
    w.mkdir(parents=True, exist_ok=True)
    state = State(w / "rounds.json")
    d = cfg.distill
    sft_dir = w / "sft"
    paths = prepare.ensure_data(cfg, sft_dir)
    heldout = paths["heldout"]
    pool = prepare.dataset_dir(d.pool_dir) if d.pool_dir else paths["train"]
    if not state.done("train_0"):
        _train(_stage_cfg(cfg, d.sft_steps), str(sft_dir))
        state.mark("train_0")
    if not state.done("eval_0"):
        state.mark("eval_0", **_evaluate(cfg, sft_dir, heldout, w / "eval_0.jsonl", d.eval_limit))
    prev = sft_dir
    accepted_dirs: list[str] = []
    for r in range(1, d.rounds + 1):
        rd = w / f"round_{r}"
        rd.mkdir(exist_ok=True)
        if not state.done(f"select_{r}"):
            rows = _sample(cfg, prev, pool, rd, r)
            state.mark(f"sample_{r}", samples=len(rows))
            kept, summary = _select(cfg, rows, pool, rd)
            seed = list(records.RecordSource(paths["train"], "train")) if d.include_seed else []
            previous = [rec for p in accepted_dirs for rec in records.RecordSource(p, "train")]
            union = seed + previous + kept
            records.write_dataset(rd / "data", {"train": lambda u=union: u},
                                  feat_dim=union[0]["mel"].shape[1] if union else 80)
            state.mark(f"select_{r}", **summary, train_examples=len(union))
        accepted_dirs.append(str(prepare.dataset_dir(rd / "data")))
        if not state.done(f"train_{r}"):
            init = sft_dir if d.from_base else prev
            rcfg = _stage_cfg(cfg, d.round_steps, accepted_dirs[-1])
            rcfg.data.tokenizer = str(paths["tokenizer"])
            from cogito_jax.train.run import load_trained

            base_model, _, _ = load_trained(cfg, init)
            _train(rcfg, str(rd / "train"), init_model=base_model)
            state.mark(f"train_{r}")
        if not state.done(f"eval_{r}"):
            rcfg = _stage_cfg(cfg, d.round_steps, accepted_dirs[-1])
            rcfg.data.tokenizer = str(paths["tokenizer"])
            state.mark(f"eval_{r}", **_evaluate(rcfg, rd / "train", heldout, w / f"eval_{r}.jsonl", d.eval_limit))
        prev = rd / "train"
    plot(state.data, w / "rounds.png")
    logger.info("self-distillation done: %s", {k: v.get("accuracy") for k, v in state.data["rounds"].items()})
    return state.data


def plot(data: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted((int(k), v) for k, v in data["rounds"].items() if "accuracy" in v)
    if not rounds:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [r for r, _ in rounds]
    acc = np.array([v["accuracy"] for _, v in rounds])
    ci = np.array([v["ci"] for _, v in rounds])
    ax.errorbar(xs, 100 * acc, yerr=[100 * (acc - ci[:, 0]), 100 * (ci[:, 1] - acc)], marker="o", capsize=4)
    ax.set(xlabel="round (0 = SFT)", ylabel="held-out accuracy (%)", title="self-distillation", xticks=xs)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
