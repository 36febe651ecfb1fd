"""The annotate stage: an instruct model writes multiple-choice questions about each clip from its metadata.

The prompt shows the clip's description (modality and manifest ``metadata``: captions, labels, ...), a few
expert questions drawn from the seed pool (``annotate.seed_questions``, JSONL ``{question, choices, answer}``
with an optional ``metadata`` or ``description``) and asks for ``questions_per_clip`` questions with hard
distractors, as a JSON array. Each output is parsed and every question validated like a manifest question
(2-6 distinct non-empty choices, the answer one of them, a non-empty question), plus what the MMAR scorer
needs (every choice has words, no two choices have the same words). Each failure has its own reason:
``unparseable``, ``no_questions`` (per clip), ``not_an_object``, ``missing_field``, ``bad_question``,
``bad_choices``, ``bad_answer``, ``duplicate_question``, ``too_many_questions`` (per question).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cogito_jax.errors import ConfigError
from cogito_jax.eval.score import tokens
from data_prep.config import MAX_QUESTIONS_PER_CLIP
from data_prep.sources.manifest import qa_problem
from data_prep.stages import generation
from data_prep.stages.cache import StageCache

SYSTEM = ("You are an expert in audio perception and reasoning. You write hard multiple-choice questions about "
          "audio clips for a listening-and-reasoning benchmark.")
SKIPPED_METADATA = ("url", "source_url", "timestamp", "audio_path")
FIELDS = ("question", "choices", "answer")


@dataclasses.dataclass
class Parsed:
    """One annotator output: the valid questions (each with its ``index`` in the output), the rejected ones
    (``{"index", "reason"}``) and, when nothing could be read, the clip-level ``problem``."""

    questions: list[dict]
    rejected: list[dict]
    problem: str | None = None


def check_question(obj: Any) -> tuple[dict | None, str | None]:
    """(the normalised question, None) or (None, the reason it is unusable).

    Choices and answer are stripped, and an answer that equals one choice but for case becomes that choice.
    """
    if not isinstance(obj, dict):
        return None, f"not_an_object: got {type(obj).__name__} {str(obj)[:60]!r}"
    missing = [k for k in FIELDS if obj.get(k) is None]
    if missing:
        return None, f"missing_field: no {', '.join(repr(k) for k in missing)} in {sorted(obj)}"
    question, choices, answer = (obj[k] for k in FIELDS)
    if isinstance(choices, list) and all(isinstance(c, str) for c in choices):
        choices = [c.strip() for c in choices]
        if isinstance(answer, str):
            answer = answer.strip()
            folded = [c for c in choices if c.casefold() == answer.casefold()]
            answer = folded[0] if answer not in choices and len(folded) == 1 else answer
    problem = qa_problem(question, choices, answer)
    if problem:
        return None, problem
    words = [tokens(c) for c in choices]
    for c, w in zip(choices, words, strict=True):
        if not w:
            return None, f"bad_choices: choice {c!r} has no words"
    for i in range(len(choices)):
        for j in range(i):
            if words[i] == words[j]:
                return None, f"bad_choices: {choices[j]!r} and {choices[i]!r} have the same words (the MMAR scorer " \
                             "cannot tell them apart)"
    return {"question": question.strip(), "choices": choices, "answer": answer}, None


def _json_payload(text: str) -> list | None:
    """The first JSON array (or object: its ``questions`` list, or itself) in ``text``."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, list):
            return obj
        return obj["questions"] if isinstance(obj.get("questions"), list) else [obj]
    return None


def parse_questions(text: str, max_questions: int = MAX_QUESTIONS_PER_CLIP) -> Parsed:
    """Parses and validates one annotator output (the answer part, after any ``</think>``)."""
    payload = _json_payload(text)
    if payload is None:
        return Parsed([], [], f"unparseable: no JSON array of questions in {text[:80]!r}")
    if not payload:
        return Parsed([], [], "no_questions: the output's list is empty")
    good, bad, seen = [], [], set()
    for k, obj in enumerate(payload):
        q, problem = check_question(obj)
        if q is not None and q["question"].casefold() in seen:
            problem = f"duplicate_question: {q['question'][:60]!r} was already asked"
        elif q is not None and len(good) >= max_questions:
            problem = f"too_many_questions: question {k + 1} of {len(payload)}; at most {max_questions} per clip"
        if problem:
            bad.append({"index": k, "reason": problem})
        else:
            seen.add(q["question"].casefold())
            good.append({**q, "index": k})
    return Parsed(good, bad)


def read_seed_pool(path: str) -> list[dict]:
    """The seed questions of a JSONL file; ConfigError naming the line for a bad one."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise ConfigError(f"annotate.seed_questions={path!r} does not exist")
    pool = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"annotate.seed_questions {path}:{n}: malformed JSON: {e.msg}") from None
        q, problem = check_question(rec)
        if problem:
            raise ConfigError(f"annotate.seed_questions {path}:{n}: {problem}")
        desc = rec.get("description") or describe({"metadata": rec.get("metadata") or {}}, 10_000)
        pool.append({**q, "description": str(desc)})
    if not pool:
        raise ConfigError(f"annotate.seed_questions={path!r} holds no questions")
    return pool


def describe(item: Mapping[str, Any], max_chars: int) -> str:
    """What the manifest says about a clip (its metadata fields, one per line); empty when it says nothing."""
    lines = []
    for k, v in (item.get("metadata") or {}).items():
        if k in SKIPPED_METADATA or v in (None, "", [], {}):
            continue
        lines.append(f"{k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}")
    if lines and item.get("modality"):
        lines.insert(0, f"modality: {item['modality']}")
    return "\n".join(lines)[:max_chars]


def pick_shots(pool: Sequence[dict], clip_id: str, k: int, seed: int) -> list[dict]:
    """``k`` seed questions for one clip, drawn without replacement by (seed, clip id)."""
    rng = np.random.default_rng([seed, zlib.crc32(clip_id.encode())])
    return [pool[i] for i in sorted(rng.choice(len(pool), size=min(k, len(pool)), replace=False))]


def prompt(description: str, shots: Sequence[dict], n: int) -> str:
    """The annotator's user text for one clip."""
    parts = [
        f"Write {n} multiple-choice question{'s' if n > 1 else ''} about an audio clip, using its description.",
        "Each question must need careful listening and reasoning to answer (counting, order, duration, comparison, "
        "cause, a speaker's intent or emotion, musical structure), not only naming the sound.",
        "Give 2 to 6 distinct choices. The distractors must be plausible and hard to rule out without listening. "
        "The answer is the exact text of one choice. Write only what the description supports.",
        'Reply with a JSON array only: [{"question": "...", "choices": ["...", "..."], "answer": "..."}]',
    ]
    for s in shots:
        example = json.dumps([{k: s[k] for k in FIELDS}], ensure_ascii=False)
        parts += ["", "Example" + (f" for a clip described as:\n{s['description']}" if s["description"] else ":"),
                  example]
    parts += ["", f"The clip's description:\n{description}", "", "Questions:"]
    return "\n".join(parts)


def run(clips: Sequence[dict], cfg: Any, out: pathlib.Path, lm: Any) -> tuple[dict[str, list[dict]], list[dict],
                                                                              dict[str, Any]]:
    """``({clip id: its question items}, rejections, stage report)``; clips already annotated are skipped."""
    a = cfg.annotate
    pool = read_seed_pool(a.seed_questions)
    # Every process reads the parsed cache and (after the generation, merged) parses every output alike;
    # process 0 alone writes the cache, once all the others have read it.
    cache = StageCache(out / "cache" / "annotate.jsonl", writable=generation.processes()[0] == 0)
    prompts, new_rows = [], []
    for clip in clips:
        if clip["id"] in cache:
            continue
        desc = describe(clip, a.max_description_chars)
        if not desc:
            new_rows.append({"id": clip["id"], "questions": [], "rejected": [], "problem":
                             "no_metadata: the manifest says nothing about the clip to write questions from"})
            continue
        shots = pick_shots(pool, clip["id"], a.num_shots, cfg.seed)
        prompts.append({"id": clip["id"], "prompt_text": prompt(desc, shots, a.questions_per_clip)})
    path = out / "cache" / "annotate_outputs.jsonl"
    outputs, before = generation.generate(lm, prompts, path, num_samples=1, temperature=a.temperature,
                                          max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, seed=cfg.seed,
                                          system=SYSTEM, who="annotate.model")
    generated = len({p["id"] for p in prompts} - before)
    for p in prompts:
        row = outputs[p["id"]][0]
        parsed = parse_questions(row["answer"])
        new_rows.append({"id": p["id"], "questions": parsed.questions, "rejected": parsed.rejected,
                         "problem": parsed.problem, "finish_reason": row["finish_reason"]})
    for row in new_rows:
        cache.add(row)
    cache.close()
    return _collect(clips, cache.rows, generated)


def _collect(clips: Sequence[dict], rows: Mapping[str, dict], generated: int
             ) -> tuple[dict[str, list[dict]], list[dict], dict[str, Any]]:
    by_clip: dict[str, list[dict]] = {}
    rejected: list[dict] = []
    for clip in clips:
        row = rows[clip["id"]]
        by_clip[clip["id"]] = [{**clip, "id": f"{clip['id']}#q{q['index']}", "clip_id": clip["id"],
                                "question": q["question"], "choices": q["choices"], "answer": q["answer"],
                                "thinking": "", "question_source": "annotator"} for q in row["questions"]]
        rejected += [{"id": f"{clip['id']}#q{r['index']}", "reason": r["reason"]} for r in row["rejected"]]
        if not row["questions"]:
            problem = row["problem"] or f"no_valid_question: all {len(row['rejected'])} questions were rejected"
            rejected.append({"id": clip["id"], "reason": problem})
    reasons = collections.Counter(r["reason"].split(":", 1)[0] for r in rejected)
    stats = {"clips": len(clips), "generated_this_run": generated,
             "clips_with_questions": sum(bool(qs) for qs in by_clip.values()),
             "questions_written": sum(len(r["questions"]) + len(r["rejected"]) for r in map(rows.get, by_clip)),
             "questions_valid": sum(len(qs) for qs in by_clip.values()), "rejected_by_reason": dict(reasons)}
    return by_clip, rejected, stats
