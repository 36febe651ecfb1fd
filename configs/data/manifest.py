"""Build a dataset from a manifest (contract 6): decode, quality-filter, log-mel, records.

    python -m data_prep.build --config configs/data/manifest.py --out DIR --config.source.manifest=M.jsonl

With no model configured (`annotate.model` / `think.model` empty) only the model-free stages run and
each item keeps the manifest's own question / choices / answer.
"""

from ml_collections import ConfigDict

from data_prep.config import base_data_config


def get_config(arg=None) -> ConfigDict:
    c = base_data_config()
    c.source.kind = "manifest"
    return c
