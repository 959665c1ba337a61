"""V2 semantics with a V2-format dictionary built here: <cls>/<eos>, 4096 truncation, Ensembl ID collapsing."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from datasets import load_from_disk
from helpers.tokenizer import oracle_cell, write_h5ad, write_v2_dictionaries

from mindformer_gf.tokenizer import (
    TokenizerInputError,
    TokenizerWarning,
    TranscriptomeTokenizer,
    check_dataset_matches_vocab,
    native,
    read_dictionary_metadata,
    tokenize,
)

N_GENES = 5000


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory, v1_tokens) -> dict:
    directory = tmp_path_factory.mktemp("v2")
    genes = [g for g in v1_tokens if g.startswith("ENSG")][:N_GENES]
    medians = np.random.default_rng(0).uniform(0.5, 5.0, N_GENES)
    mapping = {g: g for g in genes}
    mapping["ENSG90000000001"] = genes[0]  # a retired ID merged into genes[0]
    mapping["ENSG90000000002"] = genes[1]
    mapping["ENSG90000000003"] = "ENSG99999999999"  # maps outside the token dictionary: dropped
    files = write_v2_dictionaries(directory, genes, medians, mapping)
    tokens = {g: 4 + i for i, g in enumerate(genes)}
    return {"files": files, "genes": genes, "tokens": tokens, "medians": dict(zip(genes, medians, strict=True))}


BACKENDS = ["native", "numpy"] if native.is_available() else ["numpy"]


# both backends: collapsed IDs send the block through select_genes before the native kernel
@pytest.mark.parametrize("backend", BACKENDS)
def test_v2_layout_truncation_and_collapsing(tmp_path: Path, v2: dict, backend: str) -> None:
    genes = v2["genes"]
    # 4,500 dictionary genes, two alias IDs (one lower-case), one ID mapping outside, one unknown ID
    file_ids = genes[:4500] + ["ENSG90000000001", "ensg90000000002", "ENSG90000000003", "ENSG80000000000"]
    rng = np.random.default_rng(1)
    counts = np.zeros((3, len(file_ids)), dtype=np.float32)
    counts[0, :4500] = rng.integers(1, 30, 4500)  # more genes than 4094: truncated
    counts[1, [0, 1, 4500, 4501, 4502, 7]] = [2, 5, 3, 1, 4, 6]  # genes[0] += 3 (alias), genes[1] += 1
    counts[2, [4502, 4503]] = [5, 5]  # only IDs outside the dictionary: an empty cell
    n_counts = counts.sum(axis=1) + 7
    path = write_h5ad(tmp_path / "v2.h5ad", counts, file_ids, obs={"n_counts": n_counts, "sample": ["a", "b", "c"]})
    with pytest.warns(TokenizerWarning, match="dropped 1 of 3 cells"):
        result = tokenize(
            path,
            tmp_path,
            "v2",
            model_version="V2",
            custom_attr_name_dict={"sample": "sample"},
            progress=False,
            backend=backend,
            **v2["files"],
        )
    data = load_from_disk(str(result.path)).to_dict()
    cell0 = {genes[j]: float(counts[0, j]) for j in range(4500)}
    cell1 = {genes[0]: 2 + 3.0, genes[1]: 5 + 1.0, genes[7]: 6.0}
    expected = [
        [2] + oracle_cell(cell, n, v2["tokens"], v2["medians"], 4094) + [3]
        for cell, n in ((cell0, n_counts[0]), (cell1, n_counts[1]))
    ]
    assert data["input_ids"] == expected
    assert data["length"] == [4096, 5]
    assert data["sample"] == ["a", "b"]
    record = read_dictionary_metadata(result.path)
    assert record["dictionary"]["vocab_size"] == N_GENES + 4
    assert record["dictionary"]["special_tokens"] == {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
    assert record["model_input_size"] == 4096 and record["special_token"] is True
    assert record["inputs"][0]["cells_truncated"] == 1 and record["inputs"][0]["cells_empty_dropped"] == 1
    check_dataset_matches_vocab(result.path, N_GENES + 4)
    with pytest.raises(ValueError, match="vocabulary is V1"):
        check_dataset_matches_vocab(result.path, 25426)

    with pytest.raises(TokenizerInputError, match=r"appear more than once after mapping .*collapse_gene_ids"):
        tokenize(path, tmp_path, "refused", model_version="V2", collapse_gene_ids=False, progress=False, **v2["files"])


def test_special_tokens_come_from_the_dictionary(tmp_path: Path, v2: dict) -> None:
    genes = v2["genes"][:10]
    token = {"<pad>": 0, "<mask>": 1, **{g: 2 + i for i, g in enumerate(genes)}, "<cls>": 12, "<eos>": 13}
    (tmp_path / "token.pkl").write_bytes(pickle.dumps(token))
    (tmp_path / "median.pkl").write_bytes(pickle.dumps(dict.fromkeys(genes, 1.0)))
    path = write_h5ad(tmp_path / "small.h5ad", np.array([[1, 0, 3, 2, 0, 0, 0, 0, 0, 0]]), genes, {"n_counts": [6]})
    result = tokenize(
        path,
        tmp_path,
        "custom",
        model_version="V2",
        model_input_size=4,
        token_dictionary_file=tmp_path / "token.pkl",
        gene_median_file=tmp_path / "median.pkl",
        progress=False,
    )
    # counts 3 (gene 2, token 4) > 2 (gene 3, token 5) > 1 (gene 0, token 2); 4 - 2 special tokens leaves 2 genes
    assert load_from_disk(str(result.path))["input_ids"] == [[12, 4, 5, 13]]


def test_version_and_special_token_consistency(tmp_path: Path, v2: dict) -> None:
    with pytest.raises(ValueError, match="needs <cls> and <eos> .* V1 dictionary"):
        TranscriptomeTokenizer(model_version="V1", special_token=True)
    with pytest.warns(TokenizerWarning, match="V2 models expect them"):
        TranscriptomeTokenizer(model_version="V2", special_token=False, **v2["files"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer = TranscriptomeTokenizer(model_version="V2", **v2["files"])
    assert tokenizer.model_input_size == 4096 and tokenizer.special_token
    assert TranscriptomeTokenizer(model_version="V1").model_input_size == 2048
    # the reference's default is V2, whose dictionaries are not shipped: a one-line error naming the files
    with pytest.raises(ValueError, match="model_version='V2' needs the V2 dictionaries"):
        TranscriptomeTokenizer()


@pytest.mark.parametrize("backend", BACKENDS)
def test_v1_duplicate_ids_are_summed_or_refused(tmp_path: Path, v1_tokens, v1_medians, backend: str) -> None:
    genes = [g for g in v1_tokens if g.startswith("ENSG")][:3]
    counts = sp.csr_matrix(np.array([[1, 4, 2, 0], [0, 1, 0, 5]], dtype=np.float32))
    path = write_h5ad(
        tmp_path / "dup.h5ad", counts, [genes[0], genes[1], genes[2], genes[0].lower()], {"n_counts": [9, 9]}
    )
    result = tokenize(path, tmp_path, "summed", progress=False, backend=backend)
    expected = [
        oracle_cell({genes[0]: 1, genes[1]: 4, genes[2]: 2}, 9, v1_tokens, v1_medians, 2048),
        oracle_cell({genes[0]: 5, genes[1]: 1}, 9, v1_tokens, v1_medians, 2048),
    ]
    assert load_from_disk(str(result.path))["input_ids"] == expected
    with pytest.raises(TokenizerInputError, match=genes[0]):
        tokenize(path, tmp_path, "refused", collapse_gene_ids=False, progress=False)
