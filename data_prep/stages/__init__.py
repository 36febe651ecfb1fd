"""Cogito-pipe's model stages, all through the sampling driver and engine: annotate -> think -> audit.

``annotate`` (``annotate.model``) writes questions for the clips without one (or for every clip with
``annotate.only_missing=False``); the other clips keep their manifest question. ``think`` (``think.model``)
samples reasoning traces for every question and ``audit`` keeps the traces that match the key and pass the
judge. Each stage caches its work under ``DIR/cache`` (append-only JSONL keyed by id), so a re-run after a
crash redoes nothing that finished and never counts anything twice: ``annotate.jsonl`` (parsed questions per
clip) after ``annotate_outputs.jsonl`` (the annotator's raw outputs), ``think_samples.jsonl`` (the thinker's
samples, N lines per question, written together), ``audit.jsonl`` (one verdict per trace) and
``judge_http.jsonl`` (the HTTP judge's replies). The caches are keyed by id: after changing a model or its
prompts, build into a new ``--out`` (or delete those files) to redo the work.

Under ``launch/local.sh N`` (N JAX processes; process 0 alone decodes, filters and writes log-mel first, see
``data_prep.build``) each process generates its share of the annotate and think prompts (every N-th batch of
the plan a 1-process run makes, with the same seeds) into its own ``<file>.process<i>-of-<N>``, and audits the
questions it owns (by a hash of the id) into its own ``audit.jsonl`` / ``judge_http.jsonl`` shard. After a
barrier every process merges all the files, checked to hold every prompt and trace exactly once (an error
names the missing and duplicated ids), so each has the same items; process 0 writes ``annotate.jsonl``, the
dataset and the report, which are those of a 1-process run. A killed job resumes from each process's file.
A 1-process run's files count as done in a job of several processes (read only); shards of another process
count are not read.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from data_prep.stages import annotate, audit, generation, think


def configured(cfg: Any) -> bool:
    return bool(cfg.annotate.model or cfg.think.model)


def run(clips: Sequence[dict], cfg: Any, out: pathlib.Path, audio_rows: Mapping[str, dict],
        times: dict[str, float]) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(kept items in manifest order, rejections, ``{stage: report}``) for the clips that passed selection.
    A kept item carries ``clip_id`` (whose log-mel it uses), ``question_source`` and, after the audit, the
    ``thinking`` of its trace."""
    rejected: list[dict] = []
    report: dict[str, Any] = {}
    thinker = generation.load_model(cfg.think.model, "think.model") if cfg.think.model else None
    if thinker is not None:  # a model or judge that cannot work stops the build before any generation
        think.check_features(cfg, thinker)
        judge = audit.make_judge(cfg, out)
    a = cfg.annotate
    to_annotate = [c for c in clips if a.model and not (a.only_missing and c.get("question"))]
    questions: dict[str, list[dict]] = {}
    if to_annotate:
        t = time.time()
        lm = generation.load_model(a.model, "annotate.model")
        questions, more, report["annotate"] = annotate.run(to_annotate, cfg, out, lm)
        rejected += more
        times["annotate"] = time.time() - t
    items = []
    for c in clips:
        items += questions[c["id"]] if c["id"] in questions else [{**c, "clip_id": c["id"],
                                                                    "question_source": "manifest"}]
    if thinker is not None:
        t = time.time()
        samples, report["think"] = think.run(items, cfg, out, thinker, audio_rows)
        times["think"] = time.time() - t
        t = time.time()
        items, more, report["audit"] = audit.run(items, samples, cfg, out, judge)
        rejected += more
        times["audit"] = time.time() - t
    return items, rejected, report
