"""From a file's gene identifiers to dictionary tokens: ID cleaning, symbol mapping, Ensembl mapping, duplicates.

The reference upper-cases the IDs, maps them through an Ensembl mapping dictionary restricted to IDs of the token
dictionary, keeps what maps, and sums genes that map to the same ID. Unlike the reference, IDs that match nothing
are explained (symbols? mouse? versioned?) instead of silently giving near-empty cells.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

from mindformer_gf.tokenizer.dictionaries import GeneDictionaries
from mindformer_gf.tokenizer.readers import CellFile, TokenizerInputError, TokenizerWarning

HUMAN_ENSEMBL = re.compile(r"^ENSG\d{11}$")
VERSIONED_HUMAN_ENSEMBL = re.compile(r"^(ENSG\d{11})\.\d+$")
MOUSE_ENSEMBL = re.compile(r"^ENSMUSG\d{11}(\.\d+)?$")
OTHER_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?$")
GENE_ID_CHOICES = ("ensembl", "symbol")
INDEX_ATTRIBUTE = "index"
# Share of non-human-Ensembl IDs above which a partly matching file gets a warning.
FOREIGN_ID_WARNING_SHARE = 0.05


@dataclass
class GenePlan:
    """How the genes (columns) of one file become dictionary tokens.

    `column_slot[g]` is the slot of file gene g, or -1 if the gene is left out; slot s has token `slot_tokens[s]`
    and median `slot_medians[s]`. Several genes share a slot when they map to the same dictionary ID.
    """

    column_slot: np.ndarray
    slot_tokens: np.ndarray
    slot_medians: np.ndarray
    has_duplicates: bool
    n_genes: int
    n_matched: int
    attribute: str

    @property
    def n_slots(self) -> int:
        return len(self.slot_tokens)


def classify_gene_ids(ids: np.ndarray) -> Counter[str]:
    """Counts of 'human_ensembl', 'versioned_human_ensembl', 'mouse_ensembl', 'other_ensembl', 'other'."""
    kinds: Counter[str] = Counter()
    for gene_id in ids:
        if HUMAN_ENSEMBL.match(gene_id):
            kinds["human_ensembl"] += 1
        elif VERSIONED_HUMAN_ENSEMBL.match(gene_id):
            kinds["versioned_human_ensembl"] += 1
        elif MOUSE_ENSEMBL.match(gene_id):
            kinds["mouse_ensembl"] += 1
        elif OTHER_ENSEMBL.match(gene_id):
            kinds["other_ensembl"] += 1
        else:
            kinds["other"] += 1
    return kinds


def _looks_ensembl(values: np.ndarray) -> bool:
    sample = [str(v).upper() for v in values[:2000]]
    return (
        bool(sample) and sum(bool(OTHER_ENSEMBL.match(v) or HUMAN_ENSEMBL.match(v)) for v in sample) > len(sample) / 2
    )


def read_gene_ids(cell_file: CellFile, gene_id: str, attribute: str | None) -> tuple[np.ndarray, str]:
    """The identifiers of the file's genes and the attribute they came from; a missing attribute is explained."""
    if gene_id not in GENE_ID_CHOICES:
        raise ValueError(f"gene_id must be one of {GENE_ID_CHOICES}, got {gene_id!r}")
    names = cell_file.gene_attribute_names()
    index = cell_file.gene_index()
    if attribute is None:
        if gene_id == "ensembl":
            attribute = "ensembl_id"
        else:
            attribute = INDEX_ATTRIBUTE if index is not None else "Gene"
    if attribute in names:
        return cell_file.gene_attribute(attribute), attribute
    if attribute == INDEX_ATTRIBUTE and index is not None:
        return index, "var index"
    where = "var columns" if cell_file.format != "loom" else "row attributes"
    hints = []
    ensembl_like = [name for name in names if _looks_ensembl(cell_file.gene_attribute(name))]
    if ensembl_like:
        hints.append(f"{where[:-1]} '{ensembl_like[0]}' holds Ensembl IDs: pass gene_id_attr='{ensembl_like[0]}'")
    if index is not None and _looks_ensembl(index):
        hints.append("the var index holds Ensembl IDs: pass gene_id_attr='index'")
    elif gene_id == "ensembl" and index is not None and len(index):
        hints.append(f"the var index holds names like {index[0]!r}: if they are gene symbols, pass gene_id='symbol'")
    hint = "; ".join(hints) if hints else f"add the attribute '{attribute}' to the file"
    option = "--gene-id-attr" if gene_id == "ensembl" else "--gene-id-attr (with --gene-id symbol)"
    raise TokenizerInputError(
        f"{cell_file.path}: no gene attribute '{attribute}'; {where} found: {names or 'none'}. Fix: {hint} "
        f"(command line: {option})."
    )


def _symbols_to_ensembl(symbols: np.ndarray, gene_names: dict[str, str]) -> np.ndarray:
    """Ensembl ID of each symbol ('' if unknown): exact match first, then case-insensitive."""
    upper = {symbol.upper(): ensembl for symbol, ensembl in gene_names.items()}
    return np.array([gene_names.get(s) or upper.get(s.upper(), "") for s in symbols], dtype=object)


def plan_genes(
    cell_file: CellFile,
    dictionaries: GeneDictionaries,
    gene_id: str = "ensembl",
    attribute: str | None = None,
    collapse_gene_ids: bool = True,
) -> GenePlan:
    """Map the file's genes onto the token dictionary; errors and warnings explain IDs that do not match."""
    raw_ids, attribute = read_gene_ids(cell_file, gene_id, attribute)
    raw_ids = np.array([str(v).strip() for v in raw_ids], dtype=object)
    source = f"{cell_file.path} ({attribute})"
    if gene_id == "symbol":
        if dictionaries.gene_names is None:
            raise ValueError(
                "gene_id='symbol' needs a gene name dictionary; load_gene_dictionaries(load_gene_names=True)"
            )
        ensembl_ids = _symbols_to_ensembl(raw_ids, dictionaries.gene_names)
        n_named = int(sum(bool(e) for e in ensembl_ids))
        if n_named < len(raw_ids) / 2:
            kinds = classify_gene_ids(np.array([s.upper() for s in raw_ids]))
            advice = (
                " Most look like Ensembl IDs: use gene_id='ensembl' (the default)."
                if kinds["human_ensembl"] + kinds["versioned_human_ensembl"] > len(raw_ids) / 2
                else ""
            )
            warnings.warn(
                f"{source}: only {n_named} of {len(raw_ids)} gene symbols are in the gene name dictionary; the others "
                f"are left out.{advice}",
                TokenizerWarning,
                stacklevel=2,
            )
    else:
        ensembl_ids = np.array([s.upper() for s in raw_ids], dtype=object)
        versioned = [i for i, s in enumerate(ensembl_ids) if VERSIONED_HUMAN_ENSEMBL.match(s)]
        if versioned:
            # ENSG00000141510.17 names the same gene as ENSG00000141510; the reference would drop it silently.
            for i in versioned:
                ensembl_ids[i] = ensembl_ids[i].split(".", 1)[0]
            warnings.warn(
                f"{source}: removed the version suffix of {len(versioned)} Ensembl IDs (e.g. "
                f"{raw_ids[versioned[0]]} -> {ensembl_ids[versioned[0]]}); the dictionary holds unversioned IDs.",
                TokenizerWarning,
                stacklevel=2,
            )
    token = dictionaries.token
    if dictionaries.ensembl_mapping is not None:
        mapping = {k.upper(): v for k, v in dictionaries.ensembl_mapping.items() if v in token}
        dictionary_ids = [mapping.get(e) if e else None for e in ensembl_ids]
    else:
        dictionary_ids = [e if e in token and not e.startswith("<") else None for e in ensembl_ids]
    matched = np.array([d is not None for d in dictionary_ids])
    n_matched = int(matched.sum())
    kinds = classify_gene_ids(np.array([s.upper() for s in raw_ids]))
    foreign = len(raw_ids) - kinds["human_ensembl"] - kinds["versioned_human_ensembl"]
    if n_matched == 0:
        raise TokenizerInputError(
            f"{source}: none of the {len(raw_ids)} genes matched the token dictionary {dictionaries.name} "
            f"({_describe_kinds(kinds, raw_ids)}). Fix: {_advice(kinds, gene_id, len(raw_ids))}"
        )
    if gene_id == "ensembl" and foreign > FOREIGN_ID_WARNING_SHARE * len(raw_ids):
        warnings.warn(
            f"{source}: {n_matched} of {len(raw_ids)} genes matched the token dictionary {dictionaries.name}; "
            f"{_describe_kinds(kinds, raw_ids)}. Unmatched genes are left out, which shortens every cell. Fix: "
            f"{_advice(kinds, gene_id, len(raw_ids))}",
            TokenizerWarning,
            stacklevel=2,
        )
    kept_ids = [d for d in dictionary_ids if d is not None]
    missing_median = sorted({d for d in kept_ids if d not in dictionaries.median})
    if missing_median:
        raise TokenizerInputError(
            f"the gene median dictionary has no median for {len(missing_median)} genes of the token dictionary found "
            f"in {cell_file.path} (e.g. {missing_median[:3]}); token and median dictionaries must come from the same "
            "release (e.g. both *_gc104M.pkl)"
        )
    unique_ids = sorted(set(kept_ids), key=lambda d: token[d])
    has_duplicates = len(unique_ids) < len(kept_ids)
    if has_duplicates and not collapse_gene_ids:
        counts = Counter(kept_ids)
        duplicated = [d for d, c in counts.items() if c > 1]
        example = duplicated[0]
        sources = [str(raw_ids[i]) for i, d in enumerate(dictionary_ids) if d == example]
        raise TokenizerInputError(
            f"{source}: {len(duplicated)} dictionary genes appear more than once after mapping (e.g. {example} from "
            f"{sources}). Pass collapse_gene_ids=True (command line: drop --no-collapse-gene-ids) to sum their counts, "
            "as the reference does, or remove the duplicates."
        )
    slot_of = {d: s for s, d in enumerate(unique_ids)}
    column_slot = np.array([slot_of[d] if d is not None else -1 for d in dictionary_ids], dtype=np.int32)
    return GenePlan(
        column_slot=column_slot,
        slot_tokens=np.array([token[d] for d in unique_ids], dtype=np.int64),
        slot_medians=np.array([dictionaries.median[d] for d in unique_ids], dtype=np.float64),
        has_duplicates=has_duplicates,
        n_genes=len(raw_ids),
        n_matched=n_matched,
        attribute=attribute,
    )


def _describe_kinds(kinds: Counter[str], raw_ids: np.ndarray) -> str:
    labels = {
        "human_ensembl": "human Ensembl IDs",
        "versioned_human_ensembl": "versioned human Ensembl IDs",
        "mouse_ensembl": "mouse Ensembl IDs (ENSMUSG)",
        "other_ensembl": "Ensembl IDs of another species",
        "other": "other names, e.g. gene symbols",
    }
    parts = [f"{kinds[k]} {label}" for k, label in labels.items() if kinds[k]]
    return "the IDs are " + ", ".join(parts) + f"; first IDs: {[str(v) for v in raw_ids[:3]]}"


def _advice(kinds: Counter[str], gene_id: str, n_ids: int) -> str:
    main_kind = kinds.most_common(1)[0][0] if kinds else "other"
    if main_kind == "mouse_ensembl" or main_kind == "other_ensembl":
        return (
            "Geneformer's dictionaries hold human genes only; map your genes to human orthologs (e.g. with Ensembl "
            "BioMart) and put the human Ensembl IDs in the gene attribute."
        )
    if main_kind == "other" and gene_id == "ensembl":
        return (
            "if the IDs are gene symbols, pass gene_id='symbol' (--gene-id symbol) to map them through the gene name "
            "dictionary; if they are Ensembl IDs in another column, pass gene_id_attr=NAME (--gene-id-attr NAME)."
        )
    if main_kind == "other":
        return "check that the attribute holds human gene symbols, or pass Ensembl IDs with gene_id='ensembl'."
    return (
        "the IDs look like human Ensembl IDs but are not in this dictionary: check that the dictionary matches the "
        "model (V1 or V2) and that the IDs are genes, not transcripts."
    )
