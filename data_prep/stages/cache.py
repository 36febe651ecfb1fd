"""The cache of a build stage: per-item results in an append-only JSONL file, keyed by item id; and where a
clip's cached log-mel lives (a file named by a hash of the clip id, never by the id itself)."""

from __future__ import annotations

import hashlib
import json
import pathlib


def mel_path(out: pathlib.Path, clip_id: str) -> pathlib.Path:
    """The cached ``[frames, n_mels]`` log-mel of a clip under the build folder ``out``: any id (slashes, NUL,
    hundreds of characters) names a file inside ``out/cache/mel``."""
    digest = hashlib.sha256(str(clip_id).encode("utf-8", "surrogatepass")).hexdigest()
    return out / "cache" / "mel" / f"{digest}.npy"


class StageCache:
    """Per-item results of one stage in an append-only JSONL file, keyed by item id. With ``writable=False``
    (another process's file, or a file that one process of a job writes) rows are read and added in memory only."""

    def __init__(self, path: pathlib.Path, writable: bool = True):
        self.path = path
        self.rows: dict[str, dict] = {}
        text = path.read_text() if path.exists() else ""
        for line in text.splitlines():
            try:
                row = json.loads(line)
                self.rows[row["id"]] = row
            except (json.JSONDecodeError, KeyError):
                continue  # torn last line from a crash: that item is simply redone
        self._f = None
        if not writable:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("a")
        if text and not text.endswith("\n"):
            self._f.write("\n")  # the next row starts on a line of its own

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.rows

    def add(self, row: dict) -> None:
        self.rows[row["id"]] = row
        if self._f is not None:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
