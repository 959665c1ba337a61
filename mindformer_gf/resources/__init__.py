"""Paths of the data files shipped with the package (see README.md in this folder for provenance and licences)."""

from __future__ import annotations

from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parent
GENEFORMER_V1_DIR = RESOURCES_DIR / "geneformer_v1"

EXAMPLE_CELLS = {
    # raw UMI counts, Ensembl IDs in var['ensembl_id'], n_counts in obs
    "pbmc_chr21": "pbmc_chr21_10x_v3.h5ad",
    # log1p-normalised counts in .raw.X indexed by gene symbol, cell types in obs['bulk_labels']
    "pbmc68k_reduced": "pbmc68k_reduced.h5ad",
}


def example_cells_path(name: str = "pbmc_chr21") -> Path:
    """Path of a shipped example .h5ad: 'pbmc_chr21' (raw counts, Ensembl IDs) or 'pbmc68k_reduced' (cell types)."""
    try:
        return RESOURCES_DIR / EXAMPLE_CELLS[name]
    except KeyError:
        raise ValueError(f"no example dataset {name!r}; choose one of {sorted(EXAMPLE_CELLS)}") from None


def geneformer_v1_path(filename: str) -> Path:
    """Path of a shipped Geneformer V1 file, e.g. 'dosage_sens_tf_labels.csv'; raises if it is not shipped."""
    path = GENEFORMER_V1_DIR / filename
    if not path.is_file():
        shipped = sorted(p.name for p in GENEFORMER_V1_DIR.iterdir())
        raise FileNotFoundError(f"{filename} is not shipped in {GENEFORMER_V1_DIR}; shipped files: {shipped}")
    return path
