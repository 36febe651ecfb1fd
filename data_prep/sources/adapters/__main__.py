"""``python -m data_prep.sources.adapters --kind K --meta PATH --audio_dir DIR --out M.jsonl``: one source's
metadata -> a contract-6 manifest; prints one summary line. Bad input exits with code 2 and one line on stderr."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from data_prep.sources.adapters import ADAPTERS, convert
from data_prep.sources.adapters.common import CliParser, run_conversion


def build_parser() -> argparse.ArgumentParser:
    kinds = "\n".join(f"  {name}: {a.layout}" for name, a in ADAPTERS.items())
    p = CliParser(prog="python -m data_prep.sources.adapters", formatter_class=argparse.RawDescriptionHelpFormatter,
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
    return run_conversion(lambda: convert(args.kind, args.meta, args.audio_dir, args.out, ontology=args.ontology,
                                          genres=args.genres, split=args.split, subset=args.subset,
                                          patterns=args.patterns, progress=args.progress), args.kind)


if __name__ == "__main__":
    sys.exit(main())
