"""The audit stage: keep a reasoning trace only if its answer matches the key and a judge finds it sound.

Every trace is first scored by :func:`cogito_jax.distill.scoring.score_trace`: one well-formed
``<think>`` block and an answer, the answer naming one choice and correct under the official MMAR string
rule, the thinking's conclusion agreeing with it, the thinking's length in bounds. The traces that pass go
to an LLM judge (an OpenAI-compatible endpoint through :class:`cogito_jax.judge.HttpJudge`, or a local
checkpoint through :class:`cogito_jax.judge.EngineJudge`) with a rubric that rejects hallucinated audio
content, logic errors and shortcuts (:func:`cogito_jax.judge.rubric_messages`). Every verdict is a row of
``cache/audit.jsonl`` keyed by trace id (``<question id>#s<sample>``) with a digest of the trace, question and
key, so a trace that changed is audited again. The judge is asked for a JSON verdict
(:data:`cogito_jax.judge.VERDICT_FORMAT`); :func:`cogito_jax.judge.parse_verdict` reads that or a line of a
lone ACCEPT/REJECT, and a reply with none, or an ambiguous one, holds no readable verdict.
A judge call that fails after its retries, or whose replies hold no readable verdict, is recorded as
``judge_failed``: the trace is neither kept nor counted as rejected by the judge, and a re-run asks again.
A question keeps its first ``audit.max_traces_per_question`` accepted traces (by sample index); while a judge
verdict it depends on is missing, the question waits (reported as ``judge_failed``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from cogito_jax import judge as judge_lib, sharding
from cogito_jax.distill.scoring import ScoreConfig, score_trace
from cogito_jax.eval.score import is_correct
from cogito_jax.log import logger
from cogito_jax.sampling import driver
from data_prep.stages import generation
from data_prep.stages.annotate import describe
from data_prep.stages.cache import StageCache


def judge_messages(item: Mapping[str, Any], thinking: str, answer: str) -> list[dict[str, str]]:
    """The rubric prompt for one trace, with the manifest's description of the clip and, for a manifest's own
    question, its reference reasoning."""
    reference = item.get("thinking") if item.get("question_source") == "manifest" else ""
    return judge_lib.rubric_messages(item, thinking, answer, describe(item, 4000), reference or "")


def make_judge(cfg: Any, out: pathlib.Path) -> Any:
    """The configured judge (``audit.judge_url`` or ``audit.judge_local_model``), or None for no judge."""
    a = cfg.audit
    if a.judge_url:
        return judge_lib.HttpJudge(a.judge_url, a.judge_model, api_key_env=a.api_key_env, timeout_s=a.timeout_s,
                                   max_retries=a.max_retries, backoff_s=a.backoff_s, requests_per_s=a.requests_per_s,
                                   cache_path=driver.shard_path(out / "cache" / "judge_http.jsonl",
                                                                *generation.processes()))
    if a.judge_local_model:
        lm = generation.load_model(a.judge_local_model, "audit.judge_local_model")
        return judge_lib.EngineJudge(lm.model, lm.tokenizer, lm.family, max_new_tokens=a.judge_max_tokens)
    return None


def judge_trace(judge: Any, item: Mapping[str, Any], thinking: str, answer: str, *, max_tokens: int,
                attempts: int) -> dict[str, Any]:
    """The judge's verdict on one trace as an audit row (without its id): accepted, rejected or judge_failed."""
    return judge_lib.verdict(judge, judge_messages(item, thinking, answer), max_tokens=max_tokens, attempts=attempts)


def _digest(item: Mapping[str, Any], text: str) -> str:
    """What a verdict depends on: the trace, the question, its choices and key (a changed one is audited anew)."""
    blob = json.dumps([text, item["question"], item["choices"], item["answer"]], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _reason_key(reason: str) -> str:
    """A reason without its numbers (``thinking_too_short:5<20`` -> ``thinking_too_short``)."""
    return re.sub(r":[\d<>.]+$", "", reason)


def run(items: Sequence[dict], samples: Mapping[str, list[dict]], cfg: Any, out: pathlib.Path, judge: Any
        ) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(kept items, one with its trace's ``thinking``; rejected questions; stage report)."""
    a = cfg.audit
    scfg = ScoreConfig(min_thinking_chars=a.min_thinking_chars, max_thinking_chars=a.max_thinking_chars)
    index, count = generation.processes()
    path = out / "cache" / "audit.jsonl"
    if count == 1:
        cache = StageCache(path)
        rows = cache.rows
    else:  # each process audits the questions it owns into its own file; all read every file
        rows = _merged_verdicts(path, count)
        sharding.barrier("audit: verdicts read")
        cache = StageCache(driver.shard_path(path, index, count))
    if judge is None:
        logger.warning("audit: no judge configured (audit.judge_url or audit.judge_local_model); traces are kept on "
                       "the answer and format checks alone")
    to_judge, judged_elsewhere = [], 0
    for it in items:
        for r in samples[it["id"]]:
            tid, digest = f"{it['id']}#s{r['sample']}", _digest(it, r["text"])
            done = rows.get(tid)
            if done is not None and done["status"] != "judge_failed" and done.get("digest") == digest:
                continue
            v = score_trace(r["text"], it["choices"], it["answer"], is_correct, scfg)
            if count > 1 and generation.owner(it["id"], count) != index:
                judged_elsewhere += bool(v.accepted and judge is not None)
                continue
            base = {"id": tid, "question_id": it["id"], "sample": r["sample"], "digest": digest,
                    "thinking": v.thinking, "answer": v.answer}
            if not v.accepted:
                cache.add({**base, "status": "rejected", "stage": "check", "reason": v.reasons[0],
                           "reasons": v.reasons, "thinking": ""})
            elif judge is None:
                cache.add({**base, "status": "accepted", "stage": "check", "reason": None})
            else:
                to_judge.append((base, it))
    workers = cfg.audit.workers if isinstance(judge, judge_lib.HttpJudge) else 1
    attempts = judge_lib.VERDICT_ATTEMPTS if isinstance(judge, judge_lib.HttpJudge) else 1
    failed_now = 0
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(judge_trace, judge, it, base["thinking"], base["answer"], max_tokens=a.judge_max_tokens,
                               attempts=attempts): base for base, it in to_judge}
        for fut in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="audit: judge",
                        unit="trace", disable=not futures):
            row = {**futures[fut], **fut.result()}
            if row["status"] != "accepted":
                row["thinking"] = ""
            failed_now += row["status"] == "judge_failed"
            cache.add(row)
    cache.close()
    if failed_now:
        logger.warning("audit: %d of %d judge calls failed; those traces are kept out and retried on a re-run",
                       failed_now, len(to_judge))
    if count == 1:
        rows = cache.rows
    else:
        sharding.barrier("audit: judged")
        rows = _merged_verdicts(path, count, items, samples)
    kept, rejected, stats = _select(items, samples, rows, a.max_traces_per_question)
    stats.update(judged_this_run=len(to_judge) + judged_elsewhere,
                 judge="none" if judge is None else type(judge).__name__, judge_calls=dict(getattr(judge, "stats", {})))
    return kept, rejected, stats


def _merged_verdicts(path: pathlib.Path, count: int, items: Sequence[dict] = (),
                     samples: Mapping[str, list[dict]] | None = None) -> dict[str, dict]:
    """The verdicts of a job of ``count`` processes: a 1-process run's file (``path``), overridden by each
    process's own file. Given ``items`` and their ``samples``, raises naming the traces without a verdict and
    those with verdicts from more than one process."""
    rows = dict(StageCache(path, writable=False).rows)
    seen: dict[str, list[int]] = collections.defaultdict(list)
    for p in range(count):
        for tid, row in StageCache(driver.shard_path(path, p, count), writable=False).rows.items():
            seen[tid].append(p)
            rows[tid] = row
    want = [f"{it['id']}#s{r['sample']}" for it in items for r in samples[it["id"]]] if samples is not None else []
    missing = [t for t in want if t not in rows]
    twice = {t: ps for t, ps in seen.items() if len(ps) > 1}
    if missing or twice:
        raise RuntimeError(f"audit merge of {path.name} over {count} processes: every trace must be audited exactly "
                           f"once: {len(missing)} without a verdict {missing[:5]}, {len(twice)} audited by several "
                           f"processes {dict(list(twice.items())[:5])}")
    return rows


def _select(items: Sequence[dict], samples: Mapping[str, list[dict]], rows: Mapping[str, dict], keep: int
            ) -> tuple[list[dict], list[dict], dict[str, Any]]:
    kept, rejected = [], []
    traces: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    questions: collections.Counter = collections.Counter()
    for it in items:
        verdicts = [rows[f"{it['id']}#s{r['sample']}"] for r in samples[it["id"]]]
        for v in verdicts:
            traces[v["status"]] += 1
            traces["judge_verdicts"] += v["stage"] == "judge" and v["status"] != "judge_failed"
            if v["status"] != "accepted":
                reasons["judge_failed" if v["status"] == "judge_failed" else _reason_key(v["reason"])] += 1
        accepted, waiting = [], None
        for v in verdicts:
            if len(accepted) == keep:
                break
            if v["status"] == "judge_failed":
                waiting = v
                break
            if v["status"] == "accepted":
                accepted.append(v)
        if waiting is not None:
            questions["waiting_for_judge"] += 1
            rejected.append({"id": it["id"], "reason": f"{waiting['reason']} (trace {waiting['id']}; a re-run asks "
                                                       "again)"})
        elif not accepted:
            questions["rejected"] += 1
            counts = collections.Counter(_reason_key(v["reason"]) for v in verdicts)
            detail = ", ".join(f"{k} {n}" for k, n in counts.most_common())
            rejected.append({"id": it["id"], "reason": f"no_trace_accepted: 0 of {len(verdicts)} ({detail})"})
        else:
            questions["kept"] += 1
            kept += [{**it, "id": it["id"] if keep == 1 else v["id"], "thinking": v["thinking"],
                      "trace_sample": v["sample"]} for v in accepted]
    stats = {"traces": sum(traces[k] for k in ("accepted", "rejected", "judge_failed")),
             "traces_accepted": traces["accepted"], "traces_rejected": traces["rejected"],
             "traces_judge_failed": traces["judge_failed"], "judge_verdicts": traces["judge_verdicts"],
             "rejected_by_reason": dict(reasons), "questions": len(items), "questions_kept": questions["kept"],
             "questions_rejected": questions["rejected"], "questions_waiting_for_judge": questions["waiting_for_judge"],
             "records": len(kept)}
    return kept, rejected, stats
