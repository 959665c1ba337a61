"""One-time conversion of the Geneformer V1 dictionary pickles into the package's gzipped-JSON format.

    python tools/convert_dictionaries.py SOURCE_DIR [--output mindformer_gf/resources/geneformer_v1]

SOURCE_DIR holds `token_dictionary.pkl`, `gene_median_dictionary.pkl` and `gene_name_id_dict.pkl` from the Geneformer
repository. The pickles are read through the restricted unpickler (no code runs), converted, written with a header
naming their source and its SHA-256, and read back to check that every entry survived unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from mindformer_gf.safe_pickle import safe_load
from mindformer_gf.tokenizer.dictionaries import GENEFORMER_V1_DIR, read_dictionary_file, write_dictionary_file

CONVERSIONS = (
    # (pickle name, output name, kind)
    ("token_dictionary.pkl", "token_dictionary.json.gz", "token"),
    ("gene_median_dictionary.pkl", "gene_median_dictionary.json.gz", "median"),
    ("gene_name_id_dict.pkl", "gene_name_id_dict.json.gz", "gene_name"),
)
SOURCE_NOTE = "Geneformer repository (Theodoris lab), Apache-2.0 per the Geneformer model card"


def convert(source_dir: Path, output_dir: Path) -> list[Path]:
    written = []
    for pickle_name, output_name, kind in CONVERSIONS:
        source = source_dir / pickle_name
        if not source.is_file():
            raise FileNotFoundError(f"{source} not found; SOURCE_DIR must hold the Geneformer V1 dictionary pickles")
        raw = source.read_bytes()
        entries = safe_load(raw)
        provenance = {
            "source_file": pickle_name,
            "source_sha256": hashlib.sha256(raw).hexdigest(),
            "source": SOURCE_NOTE,
        }
        target = output_dir / output_name
        write_dictionary_file(target, kind, entries, name="geneformer-v1", provenance=provenance)
        reread, _ = read_dictionary_file(target, kind)
        original, _ = read_dictionary_file(source, kind)
        # float medians must round-trip bit for bit: JSON keeps Python's shortest round-tripping repr.
        if reread != original or list(reread) != list(original):
            raise RuntimeError(f"{target}: read-back differs from {source}")
        written.append(target)
        print(f"{source} -> {target}: {len(reread)} entries")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source_dir", type=Path, help="directory holding the Geneformer V1 dictionary pickles")
    parser.add_argument("--output", type=Path, default=GENEFORMER_V1_DIR, help="where to write the .json.gz files")
    args = parser.parse_args(argv)
    convert(args.source_dir, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
