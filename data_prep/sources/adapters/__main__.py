"""``python -m data_prep.sources.adapters --kind K --meta PATH --audio_dir DIR --out M.jsonl``: one source's
metadata -> a contract-6 manifest; prints one summary line. Bad input exits with code 2 and one line on stderr."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cogito_jax.config import usage_error
from data_prep.sources.adapters import ADAPTERS, AdapterError, convert


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        usage_error(message)


def build_parser() -> argparse.ArgumentParser:
    kinds = "\n".join(f"  {name}: {a.layout}" for name, a in ADAPTERS.items())
    p = _Parser(prog="python -m data_prep.sources.adapters", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Turn a source dataset's published metadata into a manifest for data_prep.build.",
                epilog=f"kinds and the metadata layout each expects:\n{kinds}")
    p.add_argument("--kind", required=True, help=f"one of {', '.join(ADAPTERS)}")
    p.add_argument("--meta", required=True, help="the metadata file (CSV / TSV / JSON as the kind expects)")
    p.add_argument("--audio_dir", "--audio-dir", dest="audio_dir", required=True, help="folder holding the clips")
    p.add_argument("--out", required=True, help="manifest JSONL to write (skipped rows go to <stem>.skipped.jsonl)")
    p.add_argument("--ontology", default=None, help="audioset: ontology.json (github.com/audioset/ontology)")
    p.add_argument("--genres", default=None, help="fma: fma_metadata/genres.csv to name genre ids")
    p.add_argument("--split", default=None,
                   help="the split this file holds (default: from its name); fma / medley_solos_db: keep only "
                        "rows of this split")
    p.add_argument("--subset", default=None, help="fma: keep tracks of small / medium / large / full")
    p.add_argument("--audio_pattern", "--audio-pattern", dest="patterns", action="append", default=None,
                   help="audio file name under --audio_dir as a format string of the kind's fields, e.g. "
                        "'{youtube_id}.flac' (repeatable; replaces the kind's defaults)")
    p.add_argument("--no_progress", "--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = convert(args.kind, args.meta, args.audio_dir, args.out, ontology=args.ontology,
                          genres=args.genres, split=args.split, subset=args.subset, patterns=args.patterns,
                          progress=args.progress)
    except AdapterError as e:
        usage_error(" ".join(str(e).split()))
    except OSError as e:
        usage_error(f"{e.filename or ''}: {e.strerror or e}")
    print(summary.line(args.kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
