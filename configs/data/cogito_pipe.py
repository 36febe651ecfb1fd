"""The whole Cogito-pipe from a manifest: decode, filter, log-mel, then annotate, think and audit with models.

    python -m data_prep.build --config configs/data/cogito_pipe.py --out DIR \
        --config.source.manifest=M.jsonl --config.annotate.seed_questions=SEEDS.jsonl \
        --config.annotate.model=INSTRUCT_CKPT --config.think.model=THINKER_CKPT \
        --config.audit.judge_url=https://HOST/v1 --config.audit.judge_model=NAME

Checkpoint folders are HF safetensors or Orbax folders with config.json and the tokenizer. The annotator
writes questions for the clips the manifest gives none; the thinker (the model to be fine-tuned) samples 8
traces per question at temperature 1; the audit keeps the first trace that matches the key and passes the
judge (an OpenAI-compatible endpoint, with the key in $OPENAI_API_KEY, or a local checkpoint through
``--config.audit.judge_local_model=CKPT``). Up to 60 s of each clip is kept; clips over 30 s are cut or
chunked the way the thinker's family takes them (``features.long_clips=auto``).
"""

from ml_collections import ConfigDict

from data_prep.config import base_data_config


def get_config(arg=None) -> ConfigDict:
    c = base_data_config()
    c.source.kind = "manifest"
    c.features.max_seconds = 60.0
    c.annotate.questions_per_clip = 2
    c.annotate.num_shots = 3
    c.think.num_samples = 8
    c.think.temperature = 1.0
    c.audit.max_traces_per_question = 1
    return c
