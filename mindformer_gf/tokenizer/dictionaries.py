"""Gene dictionaries: the token, gene-median, gene-name and Ensembl-mapping tables a tokenizer needs.

The project ships the Geneformer V1 tables as gzipped JSON with a format header (written once by
`tools/convert_dictionaries.py`, read here), so nothing is unpickled at run time. Dictionaries users bring from the
Geneformer repository (e.g. the V2 `token_dictionary_gc104M.pkl`) are pickles: they go through the project's
restricted unpickler, which admits plain containers and numpy scalars only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.io import write_bytes
from mindformer_gf.resources import GENEFORMER_V1_DIR
from mindformer_gf.safe_pickle import safe_load

DICTIONARY_FORMAT = "mindformer_gf.gene_dictionary"
DICTIONARY_FORMAT_VERSION = 1
# kind -> type every value must have once loaded
DICTIONARY_KINDS = {"token": int, "median": float, "gene_name": str, "ensembl_mapping": str}

PAD_TOKEN = "<pad>"
MASK_TOKEN = "<mask>"
CLS_TOKEN = "<cls>"
EOS_TOKEN = "<eos>"
SPECIAL_TOKENS = (PAD_TOKEN, MASK_TOKEN, CLS_TOKEN, EOS_TOKEN)

# Vocabulary sizes of the released dictionaries, used to name a version in error messages.
KNOWN_VOCAB_SIZES = {25426: "V1", 20275: "V2"}

SHIPPED_V1_FILES = {
    "token": GENEFORMER_V1_DIR / "token_dictionary.json.gz",
    "median": GENEFORMER_V1_DIR / "gene_median_dictionary.json.gz",
    "gene_name": GENEFORMER_V1_DIR / "gene_name_id_dict.json.gz",
}


class DictionaryFormatError(ValueError):
    """A dictionary file that is not what it claims to be (wrong kind, wrong value types, unknown format)."""


def describe_vocab_size(vocab_size: int) -> str:
    """'V1 (25426 tokens)' for a released size, else '25000 tokens'."""
    version = KNOWN_VOCAB_SIZES.get(int(vocab_size))
    return f"{version} ({vocab_size} tokens)" if version else f"{vocab_size} tokens"


def _coerce_entries(entries: Mapping[Any, Any], kind: str, source: str) -> dict[str, Any]:
    """Plain Python keys and values of the kind's type; numpy scalars from pickles become int/float/str."""
    value_type = DICTIONARY_KINDS[kind]
    result: dict[str, Any] = {}
    for key, value in entries.items():
        if not isinstance(key, str):
            raise DictionaryFormatError(f"{source}: keys of a {kind} dictionary must be strings, found {key!r}")
        if value_type is int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise DictionaryFormatError(f"{source}: token ids must be integers, found {key!r}: {value!r}")
            value = int(value)
        elif value_type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise DictionaryFormatError(f"{source}: gene medians must be numbers, found {key!r}: {value!r}")
            value = float(value)
            if not np.isfinite(value) or value <= 0:
                raise DictionaryFormatError(
                    f"{source}: gene median of {key} is {value}; medians must be finite and positive"
                )
        elif not isinstance(value, str):
            raise DictionaryFormatError(f"{source}: values of a {kind} dictionary must be strings, found {value!r}")
        result[key] = value
    return result


def write_dictionary_file(
    path: str | os.PathLike[str], kind: str, entries: Mapping[str, Any], name: str, provenance: Mapping[str, Any]
) -> None:
    """Write `entries` as gzipped JSON with a format header; atomic (temporary name, then rename)."""
    if kind not in DICTIONARY_KINDS:
        raise ValueError(f"unknown dictionary kind {kind!r}; expected one of {sorted(DICTIONARY_KINDS)}")
    path = Path(path)
    document = {
        "format": DICTIONARY_FORMAT,
        "format_version": DICTIONARY_FORMAT_VERSION,
        "kind": kind,
        "name": name,
        "provenance": dict(provenance),
        "entries": _coerce_entries(entries, kind, str(path)),
    }
    payload = json.dumps(document, ensure_ascii=False, indent=0).encode("utf-8")
    compressed = io.BytesIO()
    # mtime=0 and no file name: the same entries always give the same bytes (reproducible resources).
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as stream:
        stream.write(payload)
    write_bytes(path, compressed.getvalue())


def read_dictionary_file(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, Any], str]:
    """Read a dictionary of `kind` from our `.json.gz`/`.json` format or a Geneformer pickle; returns (entries, name).

    Pickles are read through the restricted unpickler; anything but plain containers and numpy scalars is refused.
    """
    if kind not in DICTIONARY_KINDS:
        raise ValueError(f"unknown dictionary kind {kind!r}; expected one of {sorted(DICTIONARY_KINDS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} dictionary file not found: {path}")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith(".pkl") or suffixes.endswith(".pickle"):
        try:
            entries = safe_load(str(path))
        except Exception as error:
            raise DictionaryFormatError(
                f"{path}: cannot be read as a Geneformer dictionary pickle ({error})"
            ) from error
        if not isinstance(entries, Mapping):
            raise DictionaryFormatError(f"{path}: expected a pickled dict, found {type(entries).__name__}")
        return _coerce_entries(entries, kind, str(path)), path.name
    opener = gzip.open if suffixes.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            document = json.loads(handle.read().decode("utf-8"))
    except (OSError, EOFError, ValueError) as error:
        raise DictionaryFormatError(f"{path}: cannot be read as a gzipped JSON dictionary ({error})") from error
    if not isinstance(document, dict) or document.get("format") != DICTIONARY_FORMAT:
        raise DictionaryFormatError(
            f"{path}: not a {DICTIONARY_FORMAT} file; pass a Geneformer .pkl dictionary or a file written by "
            "tools/convert_dictionaries.py"
        )
    if document.get("format_version", 0) > DICTIONARY_FORMAT_VERSION:
        raise DictionaryFormatError(
            f"{path}: format version {document.get('format_version')} is newer than this package reads "
            f"({DICTIONARY_FORMAT_VERSION}); upgrade mindformer_gf"
        )
    if document.get("kind") != kind:
        raise DictionaryFormatError(f"{path}: holds a {document.get('kind')} dictionary, a {kind} dictionary is needed")
    return _coerce_entries(document["entries"], kind, str(path)), str(document.get("name", path.name))


def token_dictionary_sha256(token_dictionary: Mapping[str, int]) -> str:
    """Hash of the (token, id) pairs, independent of file format and entry order."""
    canonical = json.dumps(sorted((str(k), int(v)) for k, v in token_dictionary.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class DictionaryMismatchError(ValueError):
    """A tokenized dataset and a model or dictionary that do not fit together (typically V1 data, V2 model)."""


def check_token_dictionary(
    record: Mapping[str, Any] | None, token_dictionary: Mapping[str, int], described_as: str
) -> None:
    """The one check that a dataset was tokenized with `token_dictionary`: `record` is the dataset's tokenizer record
    (`read_dictionary_metadata`), whose hash must match when it has one; `described_as` names the dictionary."""
    expected = (record or {}).get("dictionary", {}).get("token_dictionary_sha256")
    if expected and expected != token_dictionary_sha256(token_dictionary):
        raise DictionaryMismatchError(
            f"the dataset was tokenized with the dictionary '{record['dictionary'].get('name')}', not {described_as}: "
            "pass that token dictionary (token_dictionary_file / --token-dictionary) to map gene IDs to tokens"
        )


def dataset_token_dictionary(
    record: Mapping[str, Any] | None, token_dictionary_file: str | os.PathLike | None = None
) -> dict[str, int]:
    """The token dictionary that tokenized the dataset whose tokenizer record is `record`: the shipped V1 one unless
    a file is given, checked against the record."""
    if token_dictionary_file is None:
        token, described_as = load_gene_dictionaries("V1").token, "the shipped V1 dictionary"
    else:
        token, described_as = read_dictionary_file(token_dictionary_file, "token")[0], str(token_dictionary_file)
    check_token_dictionary(record, token, described_as)
    return token


@dataclass
class GeneDictionaries:
    """The tables one tokenization run uses, checked for consistency.

    `ensembl_mapping` maps input Ensembl IDs to dictionary IDs (V2 ships one to merge retired/alias IDs); without
    one, every dictionary ID maps to itself. `gene_names` maps gene symbols to Ensembl IDs (for `gene_id="symbol"`).
    """

    token: dict[str, int]
    median: dict[str, float]
    name: str
    model_version: str
    gene_names: dict[str, str] | None = None
    ensembl_mapping: dict[str, str] | None = None
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        if PAD_TOKEN not in self.token:
            raise DictionaryFormatError(
                f"token dictionary {self.name} has no {PAD_TOKEN} token; is it a token dictionary?"
            )
        ids = np.fromiter(self.token.values(), dtype=np.int64, count=len(self.token))
        if ids.min() < 0 or len(np.unique(ids)) != len(ids):
            raise DictionaryFormatError(f"token dictionary {self.name}: token ids must be distinct and non-negative")
        self.sha256 = token_dictionary_sha256(self.token)

    @property
    def vocab_size(self) -> int:
        return max(self.token.values()) + 1

    @property
    def special_tokens(self) -> dict[str, int]:
        return {token: self.token[token] for token in SPECIAL_TOKENS if token in self.token}

    def metadata(self) -> dict[str, Any]:
        """What a tokenized dataset records about the dictionary that produced it."""
        return {
            "name": self.name,
            "model_version": self.model_version,
            "vocab_size": self.vocab_size,
            "token_dictionary_sha256": self.sha256,
            "special_tokens": self.special_tokens,
        }


def load_gene_dictionaries(
    model_version: str = "V1",
    token_dictionary_file: str | os.PathLike[str] | None = None,
    gene_median_file: str | os.PathLike[str] | None = None,
    gene_mapping_file: str | os.PathLike[str] | None = None,
    gene_name_file: str | os.PathLike[str] | None = None,
    load_gene_names: bool = False,
) -> GeneDictionaries:
    """Load the dictionaries for `model_version`: the shipped V1 tables unless files are given.

    V2 tables are not shipped: pass `token_dictionary_file` and `gene_median_file` (the Geneformer repository's
    `token_dictionary_gc104M.pkl` and `gene_median_dictionary_gc104M.pkl`), and usually `gene_mapping_file`
    (`ensembl_mapping_dict_gc104M.pkl`).
    """
    if model_version not in ("V1", "V2"):
        raise ValueError(f"model_version must be 'V1' or 'V2', got {model_version!r}")
    if model_version == "V2" and (token_dictionary_file is None or gene_median_file is None):
        raise ValueError(
            "model_version='V2' needs the V2 dictionaries, which are not shipped with mindformer_gf: pass "
            "token_dictionary_file=.../token_dictionary_gc104M.pkl and gene_median_file=.../"
            "gene_median_dictionary_gc104M.pkl from the Geneformer repository (and gene_mapping_file=.../"
            "ensembl_mapping_dict_gc104M.pkl to merge alias Ensembl IDs as the reference does)"
        )
    token, token_name = read_dictionary_file(token_dictionary_file or SHIPPED_V1_FILES["token"], "token")
    median, _ = read_dictionary_file(gene_median_file or SHIPPED_V1_FILES["median"], "median")
    mapping = None
    if gene_mapping_file is not None:
        mapping, _ = read_dictionary_file(gene_mapping_file, "ensembl_mapping")
    names = None
    if load_gene_names or gene_name_file is not None:
        names, _ = read_dictionary_file(gene_name_file or SHIPPED_V1_FILES["gene_name"], "gene_name")
    return GeneDictionaries(
        token=token,
        median=median,
        name=token_name,
        model_version=model_version,
        gene_names=names,
        ensembl_mapping=mapping,
    )
