"""Shipped dictionaries, the converter, user pickles through the restricted unpickler."""

from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mindformer_gf.resources import GENEFORMER_V1_DIR, example_cells_path, geneformer_v1_path
from mindformer_gf.safe_pickle import UnsafePickleError
from mindformer_gf.tokenizer.dictionaries import (
    DictionaryFormatError,
    load_gene_dictionaries,
    read_dictionary_file,
    token_dictionary_sha256,
)

REPOSITORY = Path(__file__).resolve().parents[2]


def test_shipped_v1_dictionaries() -> None:
    dictionaries = load_gene_dictionaries("V1", load_gene_names=True)
    assert len(dictionaries.token) == 25426 and dictionaries.vocab_size == 25426
    assert len(dictionaries.median) == 25424
    assert len(dictionaries.gene_names) == 40248
    assert dictionaries.special_tokens == {"<pad>": 0, "<mask>": 1}
    # first gene entries of the Geneformer V1 pickles, as listed in the reference data README
    assert dictionaries.token["ENSG00000000003"] == 2 and dictionaries.token["ENSG00000000005"] == 3
    assert dictionaries.median["ENSG00000000003"] == 2.001186019549122
    assert dictionaries.gene_names["MT-TF"] == "ENSG00000210049"
    assert sorted(dictionaries.token.values()) == list(range(25426))
    assert dictionaries.metadata()["token_dictionary_sha256"] == token_dictionary_sha256(dictionaries.token)


def test_shipped_files_carry_provenance() -> None:
    for name in ("token_dictionary.json.gz", "gene_median_dictionary.json.gz", "gene_name_id_dict.json.gz"):
        with gzip.open(GENEFORMER_V1_DIR / name, "rt") as handle:
            document = json.load(handle)
        assert document["format"] == "mindformer_gf.gene_dictionary" and document["format_version"] == 1
        assert len(document["provenance"]["source_sha256"]) == 64
        assert "Apache-2.0" in document["provenance"]["source"]
    assert geneformer_v1_path("dosage_sens_tf_labels.csv").read_text().startswith("dosage_sensitive,")
    for name in ("bivalent_gene_labels.txt", "lys4_only_gene_labels.txt", "no_methylation_gene_labels.txt"):
        assert geneformer_v1_path(name).read_text().startswith("ENSG")
    assert example_cells_path("pbmc68k_reduced").is_file()
    with pytest.raises(ValueError, match="pbmc_chr21"):
        example_cells_path("nope")
    with pytest.raises(FileNotFoundError, match="shipped files"):
        geneformer_v1_path("nope.csv")


def test_hash_ignores_order_and_value_types() -> None:
    forward = {"<pad>": 0, "<mask>": 1, "ENSG1": np.int16(2)}
    backward = {"ENSG1": 2, "<mask>": 1, "<pad>": 0}
    assert token_dictionary_sha256(forward) == token_dictionary_sha256(backward)
    assert token_dictionary_sha256(forward) != token_dictionary_sha256({**backward, "ENSG1": 3})


def test_converter_round_trip_is_exact_and_reproducible(tmp_path: Path) -> None:
    source = tmp_path / "pickles"
    source.mkdir()
    token = {"<pad>": 0, "<mask>": 1, "ENSG00000000003": np.int16(2), "ENSG00000000005": np.int16(3)}
    median = {"ENSG00000000003": np.float64(2.001186019549122), "ENSG00000000005": np.float64(0.1 + 0.2)}
    names = {"TSPAN6": "ENSG00000000003", "C21orf62": "ENSG00000205929"}
    for name, content in (
        ("token_dictionary.pkl", token),
        ("gene_median_dictionary.pkl", median),
        ("gene_name_id_dict.pkl", names),
    ):
        (source / name).write_bytes(pickle.dumps(content))
    outputs = []
    for run in ("a", "b"):
        command = [sys.executable, "tools/convert_dictionaries.py", str(source), "--output", str(tmp_path / run)]
        subprocess.run(command, check=True, cwd=REPOSITORY, capture_output=True)
        outputs.append(sorted((tmp_path / run).iterdir()))
    for first, second in zip(*outputs, strict=True):
        assert first.read_bytes() == second.read_bytes()
    converted, name = read_dictionary_file(tmp_path / "a" / "gene_median_dictionary.json.gz", "median")
    assert name == "geneformer-v1"
    assert converted == {"ENSG00000000003": 2.001186019549122, "ENSG00000000005": 0.30000000000000004}
    tokens, _ = read_dictionary_file(tmp_path / "a" / "token_dictionary.json.gz", "token")
    assert tokens == {"<pad>": 0, "<mask>": 1, "ENSG00000000003": 2, "ENSG00000000005": 3}
    assert all(type(v) is int for v in tokens.values())


def test_user_pickles_and_their_errors(tmp_path: Path) -> None:
    good = tmp_path / "token_dictionary_gc104M.pkl"
    good.write_bytes(pickle.dumps({"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, "ENSG1": np.int64(4)}))
    assert read_dictionary_file(good, "token")[0]["ENSG1"] == 4

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"<pad>": Exploit()}))
    with pytest.raises(DictionaryFormatError, match="builtins.print") as caught:
        read_dictionary_file(evil, "token")
    assert isinstance(caught.value.__cause__, UnsafePickleError)

    with pytest.raises(DictionaryFormatError, match="token ids must be integers"):
        read_dictionary_file(_pickle(tmp_path / "m.pkl", {"ENSG1": 1.5}), "token")
    with pytest.raises(DictionaryFormatError, match="finite and positive"):
        read_dictionary_file(_pickle(tmp_path / "z.pkl", {"ENSG1": 0.0}), "median")
    with pytest.raises(DictionaryFormatError, match="expected a pickled dict"):
        read_dictionary_file(_pickle(tmp_path / "l.pkl", [1, 2]), "token")
    with pytest.raises(DictionaryFormatError, match="holds a median dictionary"):
        read_dictionary_file(GENEFORMER_V1_DIR / "gene_median_dictionary.json.gz", "token")
    not_ours = tmp_path / "other.json"
    not_ours.write_text('{"a": 1}')
    with pytest.raises(DictionaryFormatError, match="tools/convert_dictionaries.py"):
        read_dictionary_file(not_ours, "token")
    with pytest.raises(FileNotFoundError, match="token dictionary file not found"):
        read_dictionary_file(tmp_path / "missing.pkl", "token")
    with pytest.raises(DictionaryFormatError, match="has no <pad>"):
        load_gene_dictionaries(
            "V2",
            token_dictionary_file=_pickle(tmp_path / "t.pkl", {"ENSG1": 4}),
            gene_median_file=_pickle(tmp_path / "md.pkl", {"ENSG1": 1.0}),
        )


def test_v2_needs_its_files() -> None:
    with pytest.raises(ValueError, match="token_dictionary_gc104M.pkl"):
        load_gene_dictionaries("V2")
    with pytest.raises(ValueError, match="'V1' or 'V2'"):
        load_gene_dictionaries("V3")


def _pickle(path: Path, content: object) -> Path:
    path.write_bytes(pickle.dumps(content))
    return path
