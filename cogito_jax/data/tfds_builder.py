"""The TFDS builder behind ``records.write_dataset``: records from Python iterables -> array_record files.

Examples keep their input order (``disable_shuffling``): readers shuffle, writers do not have to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import tensorflow_datasets as tfds

from cogito_jax.data import records


class CogitoRecords(tfds.core.GeneratorBasedBuilder):
    """Audio multiple-choice reasoning records (see ``cogito_jax.data.records.FIELDS``)."""

    name = records.DATASET_NAME
    VERSION = tfds.core.Version(records.VERSION)
    RELEASE_NOTES = {records.VERSION: "Schema: id, mel|audio_embeds, n_frames, question, choices, answer, "
                                      "thinking, weight, source, modality, category, sub_category, provenance."}

    def __init__(self, *, splits: Mapping[str, Callable[[], Iterable[Mapping[str, Any]]]] | None = None,
                 audio_field: str = "mel", feat_dim: int = 128, description_text: str = "", **kwargs):
        self._splits = dict(splits or {})
        self._audio_field, self._feat_dim, self._description = audio_field, feat_dim, description_text
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._description or self.__doc__,
            features=records.features(self._audio_field, self._feat_dim),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        if not self._splits:
            raise ValueError("CogitoRecords needs splits={name: callable returning records} to build")
        return {name: self._generate_examples(make) for name, make in self._splits.items()}

    def _generate_examples(self, make):
        for rec in make():
            yield rec["id"], records.to_example(rec)
