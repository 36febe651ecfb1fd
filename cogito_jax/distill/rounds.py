"""Multi-round self-distillation (rejection-sampling fine-tuning on the model's own audited reasoning).

    train_0 -> eval_0 -> [ sample_r -> (hint_r) -> select_r -> train_r -> eval_r ] for r = 1..R -> (rl -> eval_rl)

``train_0``: SFT on the seed data. ``sample``: the current model answers every pool question
``num_samples`` times at temperature T, under ``orders`` different choice orders, without seeing the
key. ``hint`` (only with ``distill.all_wrong="hint"``): the prompts whose samples were all wrong are
sampled once more with the key given as a hint in the prompt (STaR rationalisation). ``select``: each
trace is scored (format, one named choice, MMAR-correct, the thinking's conclusion agrees, length) and
each prompt's traces are selected (pass rate, option-shuffle guard, near-duplicates, at most K; hinted
traces are kept as ``rationalised``); every decision is written to ``decisions.jsonl`` and the kept
traces become a records dataset (with the question as asked, never the hint). ``train``: fine-tune from
the base (SFT) checkpoint, or from the previous round, on the union of all accepted data so far (plus
the seed data when ``include_seed``). ``eval``: greedy accuracy on the held-out set. ``rl`` (only with
``distill.rl_steps > 0``): GRPO (:mod:`cogito_jax.rl.loop`, the ``rl`` section) from the last round's model on
the pool questions (those of ``rl.pool_dir`` when set) for ``distill.rl_steps`` steps, in ``W/rl``; ``eval_rl``
scores it like a round; both summaries go under ``"rl"`` in ``rounds.json``.

Every stage writes its outputs before it is marked done in ``W/rounds.json``, which also records when
each stage started and finished and how many times it was started. A restarted run skips finished
stages, and a stage interrupted midway resumes (sampling skips the prompts already in its JSONL files,
training continues from its last checkpoint), so a crash in round 2's sampling restarts there.
"""

from __future__ import annotations

import collections
import copy
import json
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cogito_jax.data import prepare, records, synthetic
from cogito_jax.distill.scoring import ScoreConfig, score_trace
from cogito_jax.distill.select import Decision, Sample, SelectConfig, hint_question, select, select_rationalised
from cogito_jax.errors import EXIT_PREEMPTED, ConfigError, check_choice, check_number
from cogito_jax.eval import predict as predict_lib
from cogito_jax.eval.score import is_correct
from cogito_jax.log import logger
from cogito_jax.rl import loop as rl_loop
from cogito_jax.sampling import driver
from cogito_jax.train import trained
from cogito_jax.train.run import train


class State:
    """``rounds.json``: the finished stages in order (``done``), each round's summary (``rounds``) and
    each stage's wall-clock record (``stages``: ``started``, ``finished``, ``seconds``, ``attempts``)."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.data = self._read(path) if path.exists() else {"done": [], "rounds": {}}
        self.data.setdefault("stages", {})

    @staticmethod
    def _read(path: pathlib.Path) -> dict:
        """The file's content; ConfigError naming it when it is garbled, cut short or not a stage record."""
        what = f"{path} is not a readable stage record"
        todo = "restore it, or delete it to run every stage again"
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise ConfigError(f"{what} ({type(e).__name__}: {e}); {todo}") from None
        if not (isinstance(data, dict) and isinstance(data.get("done"), list)
                and all(isinstance(s, str) for s in data["done"])
                and isinstance(data.get("rounds", {}), dict) and isinstance(data.get("stages", {}), dict)):
            raise ConfigError(f"{what} (expected an object with a 'done' list of stage names, 'rounds' and "
                              f"'stages'); {todo}")
        return data

    def done(self, stage: str) -> bool:
        return stage in self.data["done"]

    def start(self, stage: str) -> None:
        rec = self.data["stages"].setdefault(stage, {"attempts": 0})
        rec["attempts"] += 1
        rec["started"] = time.time()
        rec.pop("finished", None)
        self._save()

    def mark(self, stage: str, **summary: Any) -> None:
        if summary:  # round r's stages end in _r; the RL stages' summary is "rl"
            key = stage.split("_")[-1]
            (self.data["rounds"] if key.isdigit() else self.data).setdefault(key, {}).update(summary)
        rec = self.data["stages"].setdefault(stage, {"attempts": 1})
        rec["finished"] = time.time()
        if "started" in rec:
            rec["seconds"] = round(rec["finished"] - rec["started"], 2)
        if stage not in self.data["done"]:
            self.data["done"].append(stage)
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)


def _stage(state: State, name: str, fn: Callable[[], dict | None]) -> None:
    """Runs ``fn`` unless ``name`` is already done; its returned dict goes into the round's summary."""
    if state.done(name):
        logger.info("stage %s: already done", name)
        return
    logger.info("stage %s: starting", name)
    state.start(name)
    state.mark(name, **(fn() or {}))


def _train(*args: Any, **kwargs: Any) -> None:
    """A training stage; a preempted one stops the whole job (exit ``EXIT_PREEMPTED``), never marked done."""
    if train(*args, **kwargs).get("preempted"):
        logger.warning("training was preempted: stopping; a restart resumes this stage from its checkpoint")
        raise SystemExit(EXIT_PREEMPTED)


def _stage_cfg(cfg: Any, steps: int, data_dir: str | None = None, tokenizer: str | None = None) -> Any:
    c = copy.deepcopy(cfg)
    c.train.steps = steps
    if data_dir is not None:
        c.data.source, c.data.dir = "records", data_dir
    if tokenizer is not None:
        c.data.tokenizer = tokenizer
    return c


def _evaluate(cfg: Any, run_dir: pathlib.Path, heldout: pathlib.Path, out: pathlib.Path, limit: int) -> dict:
    return predict_lib.evaluate_run(cfg, run_dir, heldout, out, limit=limit, batch_size=cfg.distill.batch_size,
                                    max_new_tokens=cfg.distill.max_new_tokens)


def _per_order(cfg: Any) -> int:
    return max(cfg.distill.num_samples // cfg.distill.orders, 1)


def _pool_items(cfg: Any, pool: pathlib.Path, order_seed: int) -> list[dict]:
    return predict_lib.items_from_records(records.RecordSource(pool, "train"), limit=cfg.distill.pool_size or None,
                                          order_seed=order_seed)


def _order_seed(rnd: int, k: int, hint: bool = False) -> int:
    return 1000 * rnd + (500 if hint else 0) + k


def _generate(cfg: Any, run_cfg: Any, run_dir: pathlib.Path, orders: list[list[dict]], out_dir: pathlib.Path,
              prefix: str, seed: int) -> None:
    """Samples ``num_samples // orders`` traces per item of each order's item list into ``{prefix}_order{k}.jsonl``."""
    d = cfg.distill
    model, tok, mcfg = trained.load(run_cfg, run_dir)
    for k, items in enumerate(orders):
        predict_lib.predict(model, tok, mcfg.family, items, out_dir / f"{prefix}_order{k}.jsonl",
                            max_frames=mcfg.audio.num_frames, n_mels=mcfg.audio.num_mel_bins,
                            batch_size=d.batch_size, num_samples=_per_order(cfg), temperature=d.temperature,
                            max_new_tokens=d.max_new_tokens, seed=seed + k)


def _read(cfg: Any, orders: list[list[dict]], out_dir: pathlib.Path, prefix: str) -> list[dict]:
    """The rows of a finished sampling stage, each with its choice order and the choices as shown."""
    rows = []
    for k, items in enumerate(orders):
        got = driver.merge_outputs(out_dir / f"{prefix}_order{k}.jsonl", [it["id"] for it in items], 1,
                                   _per_order(cfg))
        shown = {it["id"]: it["choices"] for it in items}
        rows += [{**r, "order": k, "choices": shown[r["id"]]} for r in got]
    return rows


def _configs(cfg: Any) -> tuple[ScoreConfig, SelectConfig]:
    d = cfg.distill
    scfg = ScoreConfig(min_thinking_chars=d.min_thinking_chars, max_thinking_chars=d.max_thinking_chars)
    selcfg = SelectConfig(max_per_prompt=d.max_per_prompt, min_orders_correct=min(2, d.orders),
                          all_right_weight=d.all_right_weight, hint_all_wrong=d.all_wrong == "hint",
                          hint_weight=d.hint_weight)
    return scfg, selcfg


def _group(rows: list[dict], answers: dict[str, str], scfg: ScoreConfig, offset: int = 0,
           rationalised: bool = False) -> dict[str, list[tuple[dict, Sample]]]:
    """Scores every row; ``{prompt id: [(row, Sample)]}`` with sample indices ``offset + row number``."""
    per_prompt: dict[str, list[tuple[dict, Sample]]] = collections.defaultdict(list)
    for j, r in enumerate(rows):
        v = score_trace(r["text"], r["choices"], answers[r["id"]], is_correct, scfg)
        per_prompt[r["id"]].append((r, Sample(index=offset + j, verdict=v, order=(r["order"],),
                                              rationalised=rationalised)))
    return per_prompt


def _first_pass(cfg: Any, rows: list[dict], answers: dict[str, str]) -> dict[str, tuple[Decision, list]]:
    scfg, selcfg = _configs(cfg)
    return {pid: (select(pid, [s for _, s in pairs], selcfg), pairs)
            for pid, pairs in _group(rows, answers, scfg).items()}


def _select(cfg: Any, rows: list[dict], hint_rows: list[dict], pool_recs: dict[str, dict], out_dir: pathlib.Path,
            rnd: int) -> tuple[list[dict], dict]:
    """Scores and selects every prompt's traces; writes ``decisions.jsonl``; returns (kept records, summary)."""
    scfg, selcfg = _configs(cfg)
    answers = {pid: rec["answer"] for pid, rec in pool_recs.items()}
    first = _first_pass(cfg, rows, answers)
    hinted = _group(hint_rows, answers, scfg, offset=len(rows), rationalised=True)
    kept, stats, hist = [], collections.Counter(), collections.Counter()
    n_rationalised = 0
    with open(out_dir / "decisions.jsonl", "w") as f:
        for pid, (dec, pairs) in first.items():
            hist[round(dec.pass_rate, 2)] += 1
            if dec.status == "retry_with_hint" and pid in hinted:
                pairs = hinted[pid]
                dec = select_rationalised(dec, [s for _, s in pairs], selcfg)
            f.write(json.dumps(dec.to_dict()) + "\n")
            stats[dec.status] += 1
            rec = pool_recs[pid]
            for r, s in pairs:
                if s.index not in dec.kept:
                    continue
                n_rationalised += s.rationalised
                kept.append(records.make_record(
                    id=f"{pid}#r{rnd}{'h' if s.rationalised else 's'}{s.index}", mel=rec["mel"],
                    n_frames=rec["n_frames"], question=rec["question"], choices=r["choices"], answer=rec["answer"],
                    thinking=s.verdict.thinking, weight=dec.weight, source=rec.get("source", ""),
                    modality=rec.get("modality", ""), category=rec.get("category", ""),
                    sub_category=rec.get("sub_category", ""),
                    provenance={"distilled_from": pid, "round": rnd, "sample": s.index, "order": r["order"],
                                "rationalised": s.rationalised}))
    summary = {"prompts": len(first), "accepted_traces": len(kept) - n_rationalised,
               "rationalised_traces": n_rationalised, "rationalised_prompts": stats.get("rationalised", 0),
               "hint_prompts": len(hinted), "status": dict(stats),
               "pass_rate_histogram": {str(k): v for k, v in sorted(hist.items())}}
    return kept, summary


def training_union(w: pathlib.Path, rnd: int, seed: list[dict], kept: list[dict]) -> list[dict]:
    """Round ``rnd``'s training data: the seed records, every trace accepted in rounds 1..rnd-1 (carried in round
    ``rnd - 1``'s dataset, where they are the records with a ``distilled_from`` provenance), then this round's."""
    previous = []
    if rnd > 1:
        prev_data = prepare.dataset_dir(w / f"round_{rnd - 1}" / "data")
        previous = [rec for rec in records.RecordSource(prev_data, "train") if "distilled_from" in rec["provenance"]]
    return seed + previous + kept


def _pool(cfg: Any, w: pathlib.Path, paths: dict) -> pathlib.Path:
    d = cfg.distill
    if d.pool_dir:
        return prepare.dataset_dir(d.pool_dir)
    if d.synthetic_pool:
        n_mels, max_seconds = prepare.audio_window(cfg)
        return synthetic.build_dataset(w / "pool", d.synthetic_pool, seed=cfg.data.seed + 17, split="train",
                                       n_mels=n_mels, max_seconds=max_seconds)
    return paths["train"]


def rl_pool(cfg: Any, pool: pathlib.Path) -> pathlib.Path:
    """The prompts of the RL stage after the last round: ``rl.pool_dir`` when set, else the rounds' pool."""
    return prepare.dataset_dir(cfg.rl.pool_dir) if cfg.rl.pool_dir else pool


def run(cfg: Any, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Runs (or resumes) every stage; returns the ``rounds.json`` content."""
    w = pathlib.Path(workdir)
    w.mkdir(parents=True, exist_ok=True)
    state = State(w / "rounds.json")
    d = cfg.distill
    sft_dir = w / "sft"
    paths = prepare.ensure_data(cfg, sft_dir)
    heldout = paths["heldout"]
    if heldout is None:
        raise ConfigError("self-distillation evaluates every round on held-out items: set data.num_heldout > 0 "
                          "(synthetic data) or data.heldout_dir")
    pool = _pool(cfg, w, paths)
    prompts_rl = rl_pool(cfg, pool) if d.rl_steps else None
    if d.rl_steps:  # before any stage runs: the RL pool holds an RL step's prompts
        key, per_step = rl_loop.sampled_prompts(cfg.rl)
        rl_loop.step_prompts(len(records.RecordSource(prompts_rl, "train")), per_step, 0, cfg.seed, key)
    tokenizer = str(paths["tokenizer"])
    _stage(state, "train_0", lambda: _train(_stage_cfg(cfg, d.sft_steps), str(sft_dir)))
    _stage(state, "eval_0", lambda: _evaluate(cfg, sft_dir, heldout, w / "eval_0.jsonl", d.eval_limit))
    prev_dir, prev_cfg = sft_dir, cfg
    cache: dict[str, dict[str, dict]] = {}

    def pool_recs() -> dict[str, dict]:  # each pool record decoded once, and only if a stage needs it
        if "recs" not in cache:
            cache["recs"] = {rec["id"]: rec for rec in records.RecordSource(pool, "train")}
        return cache["recs"]

    for r in range(1, d.rounds + 1):
        rd = w / f"round_{r}"
        rd.mkdir(exist_ok=True)
        orders = [_pool_items(cfg, pool, _order_seed(r, k)) for k in range(d.orders)]

        def sample(r=r, rd=rd, orders=orders, run_cfg=prev_cfg, run_dir=prev_dir):
            _generate(cfg, run_cfg, run_dir, orders, rd, "samples", cfg.seed + 7919 * r)
            return {"samples": sum(len(o) for o in orders) * _per_order(cfg)}

        _stage(state, f"sample_{r}", sample)
        hint_orders: list[list[dict]] = []
        if d.all_wrong == "hint":
            if not (state.done(f"hint_{r}") and state.done(f"select_{r}")):
                answers = {i: p["answer"] for i, p in pool_recs().items()}
                retry = {pid for pid, (dec, _) in _first_pass(cfg, _read(cfg, orders, rd, "samples"), answers).items()
                         if dec.status == "retry_with_hint"}
                hint_orders = [[{**it, "question": hint_question(it["question"], it["answer"], d.hint_template)}
                                for it in _pool_items(cfg, pool, _order_seed(r, k, hint=True)) if it["id"] in retry]
                               for k in range(d.orders)]

            def hint(r=r, rd=rd, hint_orders=hint_orders, run_cfg=prev_cfg, run_dir=prev_dir):
                if any(hint_orders):
                    _generate(cfg, run_cfg, run_dir, hint_orders, rd, "hints", cfg.seed + 7919 * r + 4999)
                return {"hint_samples": sum(len(o) for o in hint_orders) * _per_order(cfg)}

            _stage(state, f"hint_{r}", hint)

        def select_round(r=r, rd=rd, orders=orders, hint_orders=hint_orders):
            rows = _read(cfg, orders, rd, "samples")
            hint_rows = _read(cfg, hint_orders, rd, "hints") if any(hint_orders) else []
            kept, summary = _select(cfg, rows, hint_rows, pool_recs(), rd, r)
            seed = list(records.RecordSource(paths["train"], "train")) if d.include_seed else []
            union = training_union(w, r, seed, kept)
            if not union:
                raise ConfigError(f"round {r} accepted no traces and distill.include_seed is off: nothing to train "
                                  "on (raise distill.num_samples or distill.sft_steps, or set include_seed)")
            records.write_dataset(rd / "data", {"train": lambda u=union: u}, feat_dim=union[0]["mel"].shape[1])
            return {**summary, "train_examples": len(union)}

        _stage(state, f"select_{r}", select_round)
        round_cfg = _stage_cfg(cfg, d.round_steps, str(prepare.dataset_dir(rd / "data")), tokenizer)

        def train_round(rd=rd, round_cfg=round_cfg, init_cfg=prev_cfg, init_dir=prev_dir):
            base_cfg, base_dir = (cfg, sft_dir) if d.from_base else (init_cfg, init_dir)
            base_model, _, _ = trained.load(base_cfg, base_dir)
            _train(round_cfg, str(rd / "train"), init_model=base_model)

        _stage(state, f"train_{r}", train_round)
        _stage(state, f"eval_{r}", lambda rd=rd, round_cfg=round_cfg, r=r: _evaluate(
            round_cfg, rd / "train", heldout, w / f"eval_{r}.jsonl", d.eval_limit))
        prev_dir, prev_cfg = rd / "train", round_cfg
    if d.rl_steps:
        rl_cfg = copy.deepcopy(prev_cfg)
        rl_cfg.rl.steps = d.rl_steps
        rl_cfg.data.tokenizer = tokenizer

        def rl_stage(init_cfg=prev_cfg, init_dir=prev_dir):
            model, tok, mcfg = trained.load(init_cfg, init_dir)
            out = rl_loop.run(rl_cfg, w / "rl", model=model, tokenizer=tok, model_cfg=mcfg,
                              pool=records.RecordSource(prompts_rl, "train"))
            if out["preempted"]:
                logger.warning("RL was preempted: stopping; a restart resumes it from its checkpoint")
                raise SystemExit(EXIT_PREEMPTED)
            return {"steps": d.rl_steps, **({"reward": out["reward"], "sample_accuracy": out["accuracy"]}
                                            if "reward" in out else {})}  # (none when every step had run)

        _stage(state, "rl", rl_stage)
        _stage(state, "eval_rl", lambda: _evaluate(rl_cfg, w / "rl", heldout, w / "eval_rl.jsonl", d.eval_limit))
    plot(state.data, w / "rounds.png")
    logger.info("self-distillation done: %s", {k: v.get("accuracy") for k, v in state.data["rounds"].items()})
    return state.data


def summary_lines(data: dict) -> list[str]:
    """A table of the rounds in ``rounds.json``: accuracy with its 95% CI, accepted and rationalised traces."""
    lines = ["round | held-out accuracy [95% CI] (n) | prompts | accepted | rationalised | train examples | decisions"]
    for k, v in sorted(data["rounds"].items(), key=lambda kv: int(kv[0])):
        acc = (f"{100 * v['accuracy']:.1f}% [{100 * v['ci'][0]:.1f}, {100 * v['ci'][1]:.1f}] (n={v['n']})"
               if "accuracy" in v else "-")
        if k == "0":
            lines.append(f"0 (sft) | {acc} | - | - | - | - | -")
            continue
        status = ", ".join(f"{s} {c}" for s, c in sorted(v.get("status", {}).items()))
        lines.append(f"{k} | {acc} | {v.get('prompts', '-')} | {v.get('accepted_traces', '-')} | "
                     f"{v.get('rationalised_traces', 0)} | {v.get('train_examples', '-')} | {status or '-'}")
    rl = data.get("rl", {})
    if "accuracy" in rl:
        lines.append(f"RL ({rl['steps']} steps) | {100 * rl['accuracy']:.1f}% [{100 * rl['ci'][0]:.1f}, "
                     f"{100 * rl['ci'][1]:.1f}] (n={rl['n']}) | - | - | - | - | -")
    return lines


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
    rl = data.get("rl", {})
    if "accuracy" in rl:  # GRPO after the last round
        a, (lo, hi) = rl["accuracy"], rl["ci"]
        ax.errorbar([xs[-1] + 1], [100 * a], yerr=[[100 * (a - lo)], [100 * (hi - a)]], marker="s", capsize=4,
                    color="C3", label=f"GRPO, {rl['steps']} steps")
        ax.legend(loc="lower right")
        xs = xs + [xs[-1] + 1]
    ax.set(xlabel="round (0 = SFT)", ylabel="held-out accuracy (%)", title="self-distillation", xticks=xs)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


ALL_WRONG = ("drop", "hint")  # what happens to prompts whose samples were all wrong

def validate(d: Mapping[str, Any]) -> None:
    """Checks the ``distill`` section (self-distillation rounds)."""
    for key in ("num_samples", "orders", "max_new_tokens", "batch_size", "max_per_prompt"):
        if d[key] < 1:
            raise ConfigError(f"distill.{key}={d[key]} must be >= 1")
    for key in ("rounds", "sft_steps", "round_steps", "pool_size", "synthetic_pool", "eval_limit",
                "min_thinking_chars", "rl_steps"):
        if d[key] < 0:
            raise ConfigError(f"distill.{key}={d[key]} must be >= 0")
    if d.orders > d.num_samples:
        raise ConfigError(f"distill.orders={d.orders} must be <= distill.num_samples={d.num_samples} "
                          "(each choice order gets num_samples // orders samples)")
    check_number("distill.temperature", d.temperature, lambda v: v >= 0, ">= 0 (0 = greedy)")
    if d.max_thinking_chars < d.min_thinking_chars:
        raise ConfigError(f"distill.max_thinking_chars={d.max_thinking_chars} is below "
                          f"distill.min_thinking_chars={d.min_thinking_chars}")
    for key in ("all_right_weight", "hint_weight"):
        check_number(f"distill.{key}", d[key], lambda v: v >= 0, ">= 0")
    check_choice("distill.all_wrong", d.all_wrong, ALL_WRONG)
    if d.all_wrong == "hint":
        try:
            d.hint_template.format(question="q", answer="a")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"distill.hint_template={d.hint_template!r} must use only {{question}} and "
                              f"{{answer}}: {type(e).__name__}: {e}") from e
        if "{answer}" not in d.hint_template or "{question}" not in d.hint_template:
            raise ConfigError(f"distill.hint_template={d.hint_template!r} must contain {{question}} and {{answer}}")
