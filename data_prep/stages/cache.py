"""The cache of a build stage: per-item results in an append-only JSONL file, keyed by item id; and where a
clip's cached log-mel lives (a file named by a hash of the clip id, never by the id itself)."""

from __future__ import annotations

import hashlib
import pathlib

from cogito_jax import jsonl


def mel_path(out: pathlib.Path, clip_id: str) -> pathlib.Path:
    """The cached ``[frames, n_mels]`` log-mel of a clip under the build folder ``out``: any id (slashes, NUL,
    hundreds of characters) names a file inside ``out/cache/mel``."""
    digest = hashlib.sha256(str(clip_id).encode("utf-8", "surrogatepass")).hexdigest()
    return out / "cache" / "mel" / f"{digest}.npy"


class StageCache:
    """Per-item results of one stage in an append-only JSONL file, keyed by item id (a later row of an id replaces
    an earlier one). A torn last line (a crash mid-write) is dropped, so its item is simply redone; any other line
    that is not a JSON object with an ``id`` raises :class:`cogito_jax.jsonl.JsonlError` naming ``file:line``.
    With ``writable=False`` (another process's file, or a file that one process of a job writes) rows are read and
    added in memory only."""

    def __init__(self, path: pathlib.Path, writable: bool = True):
        self.path = path
        self.rows: dict[str, dict] = {row["id"]: row for row in jsonl.read(path, require=("id",))}
        self._f = jsonl.open_append(path) if writable else None  # cuts a torn last line off first

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.rows

    def add(self, row: dict) -> None:
        self.rows[row["id"]] = row
        if self._f is not None:
            jsonl.write_row(self._f, row)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
