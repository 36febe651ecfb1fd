"""The RL stage: GRPO on the sampling engine's rollouts, with the trainer's state, shardings, checkpoints and metrics.

One RL step:

1. take the step's prompts of the pool (a fresh permutation of the pool each pass, :func:`step_prompts`):
   ``rl.prompts_per_step`` of them, or with dynamic sampling (``rl.sample_prompts`` > ``rl.prompts_per_step``, as
   DAPO's) that many, of which the first ``rl.prompts_per_step`` whose samples did not all score alike train;
2. let the current policy answer each ``rl.num_samples`` times through the continuous engine (temperature
   ``rl.temperature``, the prompt the evaluation uses, the key never shown); the engine stores each token's
   log-prob under the policy (the model's softmax at that temperature, which is what RL trains), and every sample
   goes to ``W/rollouts/step_<k>.jsonl``;
3. score each answer with the rewards (``rl.reward_*`` weights of :mod:`cogito_jax.rl.rewards`; with
   ``rl.reward_judge`` also the judge's verdict under the audit's rubric, asked by the process that sampled it,
   its cache in ``W/judge_cache.jsonl``), turn each prompt's rewards into group advantages, and with
   ``rl.drop_uniform_groups`` drop the prompts whose samples all scored alike (they have no gradient); at most
   ``rl.prompts_per_step`` prompts train (the first of those kept); a prompt with a failed judge call (after the
   client's retries) is dropped from the step and counted, never scored;
4. take up to ``rl.minibatches`` optimizer steps over the kept samples, shuffled, through the trainer's compiled
   step with the clipped GRPO loss (:func:`cogito_jax.rl.grpo.rl_loss`: importance ratios against the stored
   log-probs, the KL penalty to the starting model when ``rl.kl_coef > 0``, token or sequence normalisation).

Every ``rl.save_every`` steps a checkpoint holds the trainable parameters, the optimizer and the RL step. A run
restarts from its newest checkpoint and samples that step's rollouts again: a sample's tokens depend only on the
weights, the step's seed, its prompt id and its sample index, so the resumed run repeats exactly the losses an
uninterrupted one has. With several processes each samples its share of the prompts into its own file, every
process then reads all of them and feeds its rows of each global batch. Sampling runs on a local copy of the
policy in each process (the adapters folded in for LoRA), gathered after each update.

Logged per RL step (``metrics.jsonl``, TensorBoard): ``reward`` (mean) and ``reward_std``, ``accuracy`` (MMAR
rule) and ``well_formed`` of the samples, ``response_length`` (tokens) and ``truncated`` (share cut off at
``rl.max_new_tokens``), ``informative`` (share of the sampled prompts that may train: scored, and with
``rl.drop_uniform_groups`` whose samples did not all score alike),
``trained_prompts``, ``loss``, ``kl``, ``clip_fraction``, ``ratio``, ``entropy`` (per response token, of the
policy), ``grad_norm``, ``lr``, ``updates`` (optimizer steps taken), ``rollout_seconds`` / ``update_seconds``,
and with a judge ``judge_accepted`` / ``judge_failed``.
"""

from __future__ import annotations

import copy
import json
import math
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from cogito_jax import config as cfglib, jsonl, judge as judge_lib, metrics as metricslib, sharding
from cogito_jax.data.pipeline import global_batch
from cogito_jax.distill.scoring import parse_trace
from cogito_jax.errors import ConfigError, check_number
from cogito_jax.eval import predict as predict_lib
from cogito_jax.log import is_main_process, logger
from cogito_jax.rl import grpo, rewards as rewards_lib
from cogito_jax.sampling import continuous, driver
from cogito_jax.train import trainer
from cogito_jax.train.checkpoint import Checkpointer, abstract_like, check_writable
from cogito_jax.train.step import TrainState, lm_logits

REWARD_KEYS = {"correct": "reward_correct", "format": "reward_format", "consistent": "reward_consistent"}
LENGTH_BUCKETS = (64, 128, 192, 256, 384, 512, 1024)  # those of the evaluation's prompts
SEQ_MULTIPLE = 64  # a step's update rows are as long as its longest prompt + response, rounded up to a multiple


def grpo_config(r: Mapping[str, Any]) -> grpo.GRPOConfig:
    return grpo.GRPOConfig(clip_low=r.clip_low, clip_high=r.clip_high, kl_coef=r.kl_coef, normalize=r.normalize,
                           scale_std=r.scale_std, drop_uniform_groups=r.drop_uniform_groups,
                           temperature=float(r.temperature))


def reward_fn(r: Mapping[str, Any]) -> rewards_lib.Reward:
    return rewards_lib.combine({name: r[key] for name, key in REWARD_KEYS.items()})


def training_config(cfg: Any) -> Any:
    """The run's config with the trainer's keys set for RL: ``train.steps`` = optimizer steps (``rl.steps x
    rl.minibatches``, the schedule's length), ``train.batch_size`` = rows per optimizer step, ``optim.lr`` =
    ``rl.lr`` (when set) and ``optim.warmup_steps`` = ``rl.warmup_steps``."""
    c = copy.deepcopy(cfg)
    r = c.rl
    c.train.steps = max(r.steps * r.minibatches, 1)
    c.train.batch_size = rows_per_update(r)
    c.train.grad_accum = 1
    c.optim.lr = r.lr or c.optim.lr
    c.optim.warmup_steps = r.warmup_steps
    return c


def rows_per_update(r: Mapping[str, Any]) -> int:
    return r.prompts_per_step * r.num_samples // r.minibatches


def sampled_prompts(r: Mapping[str, Any]) -> tuple[str, int]:
    """(its key, the number): how many prompts an RL step samples."""
    return ("rl.sample_prompts", r.sample_prompts) if r.sample_prompts else ("rl.prompts_per_step", r.prompts_per_step)


def step_prompts(pool_size: int, per_step: int, step: int, seed: int, key: str = "rl.prompts_per_step") -> list[int]:
    """The pool indices of RL step ``step``: each pass over the pool is a new permutation cut into
    ``pool_size // per_step`` steps of ``per_step`` distinct prompts (the ``pool_size % per_step`` left over differ
    from pass to pass); ``key`` is the setting ``per_step`` comes from, named when the pool is too small."""
    if not 0 < per_step <= pool_size:
        raise ConfigError(f"{key}={per_step} must be <= the {pool_size} prompts of the pool")
    epoch, at = divmod(step, pool_size // per_step)
    perm = np.random.default_rng([seed, epoch]).permutation(pool_size)
    return perm[at * per_step:(at + 1) * per_step].tolist()


def driver_config(cfg: Any, model_cfg: Any, step: int) -> driver.DriverConfig:
    r, a = cfg.rl, model_cfg.audio
    return driver.DriverConfig(
        family=model_cfg.family, batch_size=r.sample_batch_size, num_samples=r.num_samples,
        max_new_tokens=r.max_new_tokens, temperature=float(r.temperature), top_p=float(r.top_p),
        seed=(cfg.seed + 7919 * (step + 1)) % 2**31, max_frames=a.num_frames, n_mels=a.num_mel_bins,
        n_window=getattr(a, "n_window", 50), system="default", length_buckets=LENGTH_BUCKETS, logprobs=True)


# ----------------------------------------------------------------------------- rollouts -> training rows


def score_rollouts(rows: list[dict], items: list[dict], reward: rewards_lib.Reward, num_samples: int,
                   verdicts: Mapping[tuple[str, int], str] | None = None, judge_weight: float = 0.0
                   ) -> dict[str, np.ndarray]:
    """``[P, N]`` arrays of each sample's ``reward``, ``correct``, ``formed``, ``length``, ``truncated``, and
    (with ``verdicts``, the judge's status per ``(id, sample)``) ``judged`` (accepted) and ``judge_failed``;
    ``rows`` are the driver's rows in item order, ``num_samples`` per item. A sample whose judge call failed has
    no reward (NaN)."""
    p = len(items)
    out = {k: np.zeros((p, num_samples), np.float32)
           for k in ("reward", "correct", "formed", "length", "truncated", "judged", "judge_failed")}
    for j, row in enumerate(rows):
        i, s = divmod(j, num_samples)
        item = items[i]
        if row["id"] != item["id"] or int(row["sample"]) != s:
            raise RuntimeError(f"rollout row {j} is {row['id']!r} sample {row['sample']}, expected "
                               f"{item['id']!r} sample {s}")
        out["reward"][i, s] = reward(row["text"], item)
        out["correct"][i, s] = rewards_lib.correctness(row["text"], item)
        out["formed"][i, s] = rewards_lib.well_formed(row["text"], item)
        out["length"][i, s] = row["n_tokens"]
        out["truncated"][i, s] = row["finish_reason"] == "length"
        if verdicts is not None:
            status = verdicts.get((row["id"], int(row["sample"])), "rejected")  # no verdict: nothing to judge
            out["judged"][i, s] = status == "accepted"
            out["judge_failed"][i, s] = status == "judge_failed"
            out["reward"][i, s] = np.nan if status == "judge_failed" else out["reward"][i, s] + judge_weight * (
                status == "accepted")
    return out


def group_advantages(rewards_pn: np.ndarray, gcfg: grpo.GRPOConfig) -> tuple[np.ndarray, np.ndarray]:
    """(advantages ``[P, N]``, which prompts may train ``[P]``): a prompt with a sample left unscored (NaN: its
    judge call failed) is left out, and with ``drop_uniform_groups`` so is one whose samples all scored alike."""
    scored = ~np.isnan(rewards_pn).any(axis=1)
    known = np.where(scored[:, None], rewards_pn, 0.0)
    keep = scored & (grpo.informative_groups(known) if gcfg.drop_uniform_groups else True)
    return grpo.group_advantages(known, gcfg.scale_std, gcfg.eps), keep


def first_kept(kept: np.ndarray, limit: int) -> np.ndarray:
    """The first ``limit`` prompts of ``kept`` (``[P]`` bool): those that train when a step sampled more prompts
    than it trains on (dynamic sampling)."""
    return kept & (np.cumsum(kept) <= limit)


def judge_rows(judge: Any, rows: list[dict], items: Mapping[str, dict], out: pathlib.Path, *, max_tokens: int
               ) -> None:
    """The judge's verdict (:func:`cogito_jax.judge.verdict` under the audit's rubric, with the item's reference
    ``thinking`` when it has one) on each of ``rows`` that has a thinking and an answer, one ``{id, sample,
    status, reason}`` line each in ``out``, written whole (a sample without both is not asked: it is rejected)."""
    lines = []
    for row in rows:
        thinking, answer, _ = parse_trace(row["text"])
        if thinking is None or not answer:
            continue
        item = items[row["id"]]
        messages = judge_lib.rubric_messages(item, thinking, answer, reference=item.get("thinking", ""))
        v = judge_lib.verdict(judge, messages, max_tokens=max_tokens, attempts=judge_lib.VERDICT_ATTEMPTS)
        lines.append(json.dumps({"id": row["id"], "sample": int(row["sample"]), "status": v["status"],
                                 "reason": v["reason"]}) + "\n")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(lines))
    tmp.replace(out)


def example_rows(rows: list[dict], prompts: list[dict], advantages_pn: np.ndarray, keep_p: np.ndarray,
                 num_samples: int) -> list[dict]:
    """One training row per kept sample: ``prompt`` ids, ``response`` ids (with the end token when it ended),
    their stored ``logprobs``, its ``advantage`` and its prompt's audio (``mel``, ``n_frames``)."""
    out = []
    for j, row in enumerate(rows):
        i, s = divmod(j, num_samples)
        if not keep_p[i] or not row["token_ids"]:
            continue
        g = prompts[i]
        out.append({"prompt": g["ids"], "response": row["token_ids"], "logprobs": row["logprobs"],
                    "advantage": float(advantages_pn[i, s]), "mel": g["item"].get("mel"), "n_frames": g["n_frames"]})
    return out


def batch_arrays(examples: list[dict], rows: int, seq_len: int, pad_id: int, n_mels: int, max_frames: int,
                 normalize: str) -> dict[str, np.ndarray]:
    """The global batch of ``examples`` padded to ``rows`` rows of ``seq_len`` tokens (right padding).

    A row holds prompt + response as ``input_ids``; ``targets`` are the next tokens; ``loss_mask`` is 1 where the
    target is a response token, and there ``old_logprobs`` holds the engine's log-prob of that token and
    ``advantages`` the sample's advantage. Rows beyond the examples repeat the first one with no loss.
    """
    ids = np.full((rows, seq_len), pad_id, np.int32)
    attn = np.zeros((rows, seq_len), np.int32)
    targets = np.full((rows, seq_len), pad_id, np.int32)
    mask, old, adv = (np.zeros((rows, seq_len), np.float32) for _ in range(3))
    audio = any(e["n_frames"] for e in examples)
    feats = np.zeros((rows, n_mels, max_frames), np.float32) if audio else None
    fmask = np.zeros((rows, max_frames), np.int32) if audio else None
    for k in range(rows):
        e = examples[k] if k < len(examples) else examples[0]
        seq = list(e["prompt"]) + list(e["response"])
        if len(seq) > seq_len:
            raise ValueError(f"a rollout of {len(seq)} tokens does not fit the batch's {seq_len}")
        n, start, m = len(seq), len(e["prompt"]) - 1, len(e["response"])
        ids[k, :n], attn[k, :n], targets[k, :n - 1] = seq, 1, seq[1:]
        if k < len(examples):
            mask[k, start:start + m] = 1.0
            old[k, start:start + m] = e["logprobs"]
            adv[k, start:start + m] = e["advantage"]
        if audio and e["n_frames"]:
            f = e["n_frames"]
            feats[k, :, :f] = np.asarray(e["mel"], np.float32)[:f].T
            fmask[k, :f] = 1
    out = {"input_ids": ids, "attention_mask": attn, "targets": targets, "loss_mask": mask, "old_logprobs": old,
           "advantages": adv}
    if audio:
        out.update(input_features=feats, feature_attention_mask=fmask)
    if normalize == "sequence":
        out["rl_weight"] = np.asarray(grpo.sequence_weights(mask), np.float32)
    return out


def update_length(examples: list[dict], limit: int) -> int:
    """The row length of a step's updates: its longest prompt + response rounded up to ``SEQ_MULTIPLE`` (few
    shapes compile), at most ``limit`` (the prompts' length bucket + ``rl.max_new_tokens``)."""
    longest = max((len(e["prompt"]) + len(e["response"]) for e in examples), default=1)
    return min(-(-longest // SEQ_MULTIPLE) * SEQ_MULTIPLE, limit)


def process_rows(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's share of a global batch (``pipeline.global_batch`` puts process ``p``'s rows p-th)."""
    n, p = jax.process_count(), jax.process_index()
    return {k: v[p * (len(v) // n):(p + 1) * (len(v) // n)] for k, v in batch.items()}


# ----------------------------------------------------------------------------- the policy the engine samples


class Sampler:
    """A local, unsharded copy of the policy for the engine, refreshed after every update: the compiled sampling
    programs are kept, only the weights change."""

    def __init__(self, graphdef: nnx.GraphDef, frozen: Any):
        self.device = jax.local_devices()[0]
        self.graphdef, self.frozen = graphdef, self._local(frozen)
        self.model: nnx.Module | None = None

    def _local(self, tree: Any) -> Any:
        return jax.tree.map(lambda a: sharding.gather(a, self.device), tree)

    def update(self, params: Any, slots: continuous.SlotConfig) -> nnx.Module:
        plain = trainer.unwrap(nnx.merge(self.graphdef, self._local(params), self.frozen))
        state = jax.device_put(nnx.state(plain), self.device)  # (what unwrap made, e.g. LoRA folded in)
        if self.model is None:
            nnx.update(plain, state)
            self.model = plain
        else:
            nnx.update(self.model, state)
            continuous.engine_for(self.model, slots).load_weights(self.model)
        return self.model


# ----------------------------------------------------------------------------- the loop


def run(cfg: Any, workdir: str | pathlib.Path, *, model: nnx.Module, tokenizer: Any, model_cfg: Any, pool: Any,
        mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
    """Runs (or resumes) ``cfg.rl.steps`` RL steps from ``model`` on the prompts of ``pool`` (a records source);
    returns the last step's metrics and ``preempted``. Checkpoints go to ``workdir`` like a training run's, so
    ``cogito_jax.train.trained.load(cfg, workdir)`` loads the result."""
    r = cfg.rl
    w = pathlib.Path(workdir)
    w.mkdir(parents=True, exist_ok=True)
    check_writable(w)
    tcfg = training_config(cfg)
    mesh = mesh or sharding.make_mesh(cfg.mesh)
    rules = sharding.resolve_rules(cfg.sharding.rules)
    check_layout(r, mesh, rules)
    if len(pool) == 0:
        raise ConfigError("rl: the prompt pool has no records")
    key, per_step = sampled_prompts(r)
    step_prompts(len(pool), per_step, 0, cfg.seed, key)  # the pool holds a step's prompts
    if jax.process_index() == 0:
        cfglib.dump(cfg, w / "config.json")
    gcfg, reward = grpo_config(r), reward_fn(r)
    judge = (judge_lib.HttpJudge(r.judge_url, r.judge_model, api_key_env=r.judge_api_key_env,
                                 cache_path=driver.shard_path(w / "judge_cache.jsonl", jax.process_index(),
                                                              jax.process_count()))
             if r.reward_judge else None)
    with sharding.use_rules(rules):
        placed = sharding.place(trainer.for_training(tcfg, model), mesh, rules)
    p = trainer.prepare(tcfg, placed, mesh, rules)
    state, frozen = p.state, p.frozen
    ref = jax.tree.map(jnp.copy, state.params) if r.kl_coef else None  # the starting policy, never donated
    ckpt = Checkpointer(w, cfg.checkpoint.keep_last, cfg.checkpoint.keep_every, cfg.checkpoint.async_save)
    restored = ckpt.restore(abstract_like(state))
    start = 0
    if restored is not None:
        start, saved, _, _ = restored
        state = TrainState(*saved)
        logger.info("rl: resumed after step %d from %s", start, ckpt.directory)
    rollouts = w / "rollouts"
    if is_main_process():  # a restarted run samples its steps again (identically): no earlier file is trusted
        rollouts.mkdir(exist_ok=True)
        for f in rollouts.glob("step_*.jsonl*"):
            if int(f.name[5:11]) >= start:
                f.unlink()
    sharding.barrier("rl: rollouts cleared")
    writer = metricslib.from_config(w, cfg, resume_step=start)
    sampler = Sampler(p.graphdef, frozen)
    loss_fn = grpo.rl_loss(gcfg)
    compiled: dict[tuple, Any] = {}
    ref_logprobs = jax.jit(lambda ref_params, frozen, batch: grpo.token_logprobs(
        lm_logits(nnx.merge(p.graphdef, ref_params, frozen), batch), batch["targets"], gcfg.temperature))
    meta = {"config": cfg.to_dict(), "rl": True}
    last: dict[str, Any] = {}
    bar = tqdm(total=r.steps, initial=start, desc="rl", unit="step", dynamic_ncols=True, disable=not is_main_process())
    try:
        with trainer.Preemption() as preempt:
            for step in range(start, r.steps):
                t0 = time.perf_counter()
                dcfg = driver_config(cfg, model_cfg, step)
                policy = sampler.update(state.params, dcfg.slot_config())
                items = [{**predict_lib.item_from_record(pool[i], i), "thinking": pool[i].get("thinking", "")}
                         for i in step_prompts(len(pool), per_step, step, cfg.seed, key)]
                prompts = [driver.prepare_prompt(it, tokenizer, dcfg) for it in items]
                rows, verdicts = _sample(policy, tokenizer, items, dcfg, rollouts / f"step_{step:06d}.jsonl", judge,
                                         r.judge_max_tokens)
                scores = score_rollouts(rows, items, reward, r.num_samples, verdicts, r.reward_judge)
                adv, kept = group_advantages(scores["reward"], gcfg)
                keep = first_kept(kept, r.prompts_per_step)
                examples = example_rows(rows, prompts, adv, keep, r.num_samples)
                np.random.default_rng([cfg.seed, step, 1]).shuffle(examples)
                t1 = time.perf_counter()
                per = rows_per_update(r)
                seq_len = update_length(examples, driver.bucket_length(max(len(g["ids"]) for g in prompts),
                                                                       LENGTH_BUCKETS) + r.max_new_tokens)
                with jax.set_mesh(mesh), sharding.use_rules(rules):  # sampling ran on a local device
                    sums: dict[str, float] = {}
                    updates = 0
                    for k in range(0, len(examples), per):
                        batch = batch_arrays(examples[k:k + per], per, seq_len, tokenizer.pad_token_id,
                                             model_cfg.audio.num_mel_bins, model_cfg.audio.num_frames, gcfg.normalize)
                        batch = global_batch(process_rows(batch), mesh)
                        if ref is not None:
                            batch["ref_logprobs"] = jax.device_put(ref_logprobs(ref, frozen, batch),
                                                                   batch["targets"].sharding)
                        key = tuple((n, v.shape, str(v.dtype)) for n, v in sorted(batch.items()))
                        if key not in compiled:
                            compiled[key] = trainer.compile_train_step(p, batch, loss_fn)
                        state, m = compiled[key](state, frozen, batch)
                        updates += 1
                        for n in ("loss", "kl", "clipped", "ratio", "entropy", "grad_norm"):
                            sums[n] = sums.get(n, 0.0) + float(m[n])
                metrics = {
                    "reward": float(np.nanmean(scores["reward"])), "reward_std": float(np.nanstd(scores["reward"])),
                    "accuracy": float(scores["correct"].mean()), "well_formed": float(scores["formed"].mean()),
                    "response_length": float(scores["length"].mean()), "truncated": float(scores["truncated"].mean()),
                    "informative": float(kept.mean()), "trained_prompts": int(keep.sum()), "updates": updates,
                    "lr": float(p.schedule(int(state.step))),
                    **({"judge_accepted": float(scores["judged"].mean()),
                        "judge_failed": int(scores["judge_failed"].sum())} if judge is not None else {}),
                    "rollout_seconds": t1 - t0, "update_seconds": time.perf_counter() - t1,
                    **{("clip_fraction" if n == "clipped" else n): v / updates for n, v in sums.items()},
                }
                if updates and not math.isfinite(metrics["loss"]):
                    raise trainer.NonFiniteLoss(f"rl: loss is {metrics['loss']} at step {step + 1}; the last good "
                                                f"checkpoint (step {ckpt.latest_step()}) is kept")
                writer.write_now(step + 1, metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward']:.3f}", acc=f"{metrics['accuracy']:.3f}", refresh=False)
                last = {"step": step + 1, **metrics}
                done = step + 1
                if done % r.save_every == 0 or done == r.steps or preempt.requested:
                    writer.flush(durable=True)
                    ckpt.save(done, state, {"rl_step": done}, meta, force=True)
                    ckpt.check(wait=True)
                if preempt.requested:
                    break
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    return {**last, "preempted": preempt.requested}


def _sample(policy: nnx.Module, tokenizer: Any, items: list[dict], dcfg: driver.DriverConfig, out: pathlib.Path,
            judge: Any = None, judge_max_tokens: int = 0) -> tuple[list[dict], dict[tuple[str, int], str] | None]:
    """Every process samples its share of ``items`` into its own file (and has the judge read its own samples);
    then all read every file. Returns the rows and, with a judge, each sample's verdict status."""
    n, i = jax.process_count(), jax.process_index()
    driver.run(items, out, model=policy, tokenizer=tokenizer, cfg=dcfg, eos_token_ids=predict_lib.stop_ids(tokenizer),
               pad_token_id=tokenizer.pad_token_id, process_index=i, process_count=n, progress=False)
    judged = out.with_name(out.stem + ".judge.jsonl")
    if judge is not None:
        own = jsonl.read(driver.shard_path(out, i, n), require=("id",))
        judge_rows(judge, own, {it["id"]: it for it in items}, driver.shard_path(judged, i, n),
                   max_tokens=judge_max_tokens)
    sharding.barrier(f"rl: {out.name} sampled")
    rows = driver.merge_outputs(out, [it["id"] for it in items], n, dcfg.num_samples)
    if judge is None:
        return rows, None
    verdicts = {(v["id"], v["sample"]): v["status"] for p in range(n)
                for v in jsonl.read(driver.shard_path(judged, p, n), require=("id",))}
    return rows, verdicts


def check_layout(r: Mapping[str, Any], mesh: jax.sharding.Mesh, rules: sharding.Rules) -> None:
    """ConfigError unless the rows of an update split evenly over the processes and the batch's mesh axes."""
    rows = rows_per_update(r)
    spec = sharding.logical_to_spec(("batch",), rules, mesh)[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    shards = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    for what, n in (("processes", jax.process_count()), ("batch shards of the mesh", shards)):
        if rows % n:
            raise ConfigError(f"rl.prompts_per_step x rl.num_samples / rl.minibatches = {rows} rows per update do not "
                              f"split over the {n} {what}")


def validate(r: Mapping[str, Any]) -> None:
    """Checks the ``rl`` section."""
    for key in ("prompts_per_step", "num_samples", "max_new_tokens", "sample_batch_size", "minibatches",
                "save_every"):
        if r[key] < 1:
            raise ConfigError(f"rl.{key}={r[key]} must be >= 1")
    for key in ("steps", "warmup_steps", "sample_prompts"):
        if r[key] < 0:
            raise ConfigError(f"rl.{key}={r[key]} must be >= 0")
    if r.num_samples < 2:
        raise ConfigError(f"rl.num_samples={r.num_samples} must be >= 2 (advantages are relative to a prompt's "
                          "other samples)")
    if (r.prompts_per_step * r.num_samples) % r.minibatches:
        raise ConfigError(f"rl.prompts_per_step x rl.num_samples = {r.prompts_per_step * r.num_samples} samples do "
                          f"not split into rl.minibatches={r.minibatches} updates")
    if 0 < r.sample_prompts < r.prompts_per_step:
        raise ConfigError(f"rl.sample_prompts={r.sample_prompts} must be 0 (= rl.prompts_per_step) or >= "
                          f"rl.prompts_per_step={r.prompts_per_step}")
    check_number("rl.top_p", r.top_p, lambda v: 0 < v <= 1, "in (0, 1]")
    check_number("rl.lr", r.lr, lambda v: v >= 0, ">= 0 (0 = optim.lr)")
    for key in REWARD_KEYS.values():
        check_number(f"rl.{key}", r[key], lambda v: v >= 0, ">= 0")
    if not any(r[key] for key in (*REWARD_KEYS.values(), "reward_judge")):
        raise ConfigError("rl: every reward weight is 0 (" + ", ".join(f"rl.{k}" for k in REWARD_KEYS.values())
                          + ", rl.reward_judge)")
    check_number("rl.reward_judge", r.reward_judge, lambda v: v >= 0, ">= 0")
    if r.reward_judge:
        if not r.judge_model:
            raise ConfigError("rl.reward_judge > 0 needs rl.judge_model (the model name the endpoint serves)")
        judge_lib.check_settings(r.judge_url, prefix="rl.")
    check_number("rl.judge_max_tokens", r.judge_max_tokens, lambda v: v >= 1, ">= 1")
    grpo_config(r)
