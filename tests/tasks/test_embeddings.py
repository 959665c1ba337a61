"""Embeddings against the numpy reference: hidden states of `mindformer_gf.reference.forward` (float64), mean-pooled
in the test over each cell's gene positions; rows must come back in input order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers.tasks import V2_CLS, V2_EOS, v2_dataset

from mindformer_gf import reference
from mindformer_gf.tasks import EmbExtractor


def reference_hidden_states(weights, config, cells, layer_index):
    """Per cell, the reference's hidden state `layer_index` over its own tokens (one cell at a time: no padding)."""
    encoder_weights = {k[len("bert.") :]: v for k, v in weights.items() if k.startswith("bert.")}
    states = []
    for cell in cells:
        ids = np.asarray(cell, np.int64)[None]
        _, hidden = reference.forward(encoder_weights, ids, np.ones_like(ids), config, "BertModel")
        states.append(hidden[layer_index][0])
    return states


@pytest.fixture(scope="module")
def extracted(tiny_model_dir, pbmc_dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("embeddings")
    extractor = EmbExtractor(
        emb_mode="cell",
        emb_layer=-1,
        emb_label=["cell_type"],
        max_ncells=150,
        forward_batch_size=16,
        summary_stat="exact_mean",
        num_buckets=2,
        seed=5,
        progress=False,
    )
    embs = extractor.extract_embs(tiny_model_dir, pbmc_dataset_dir, out, "pbmc")
    return extractor, embs, out


@pytest.mark.parametrize("emb_layer", [-1, 0])
def test_cell_embeddings_equal_a_reference_mean_pool_in_input_order(
    tiny_model_dir, tiny_config, tiny_weights, pbmc_dataset, emb_layer
):
    rows = np.asarray([3, 650, 17, 400, 18, 99, 5])  # any order of lengths; results must follow input rows
    dataset = pbmc_dataset.select(rows)
    extractor = EmbExtractor(
        emb_mode="cell", emb_layer=emb_layer, max_ncells=None, forward_batch_size=4, num_buckets=2, progress=False
    )
    embs = extractor.extract_embs(tiny_model_dir, dataset)
    cells = dataset["input_ids"]
    layer = tiny_config.num_hidden_layers + emb_layer
    expected = np.stack([h.mean(axis=0) for h in reference_hidden_states(tiny_weights, tiny_config, cells, layer)])
    np.testing.assert_array_equal(embs.meta["dataset_row"].to_numpy(), np.arange(rows.size))
    np.testing.assert_allclose(embs.matrix, expected, rtol=1e-4, atol=1e-5)


def test_written_csv_npy_and_exact_means(extracted, pbmc_dataset):
    extractor, embs, out = extracted
    frame = pd.read_csv(out / "pbmc.csv")
    matrix = np.load(out / "pbmc.npy")
    rows = frame["dataset_row"].to_numpy()
    assert rows.size == 150 and np.all(np.diff(rows) > 0)  # a sample of the cells, in input order
    np.testing.assert_array_equal(frame["cell_type"].to_numpy(), np.asarray(pbmc_dataset["cell_type"])[rows])
    np.testing.assert_allclose(frame[[str(i) for i in range(matrix.shape[1])]].to_numpy(), matrix, rtol=1e-6)
    means = pd.read_csv(out / "pbmc_mean_by_cell_type.csv", index_col="cell_type")
    by_hand = frame.groupby("cell_type")[[str(i) for i in range(matrix.shape[1])]].mean()
    np.testing.assert_allclose(means.loc[by_hand.index].to_numpy(), by_hand.to_numpy(), rtol=1e-5, atol=1e-7)
    medians = EmbExtractor(emb_label=["cell_type"], summary_stat="exact_median").state_embs(embs, "cell_type")
    dendritic = matrix[frame["cell_type"].to_numpy() == "Dendritic"]
    np.testing.assert_allclose(medians["Dendritic"], np.median(dendritic.astype(np.float64), axis=0), rtol=1e-12)


@pytest.mark.slow  # UMAP compiles its numba kernels on first use
def test_umap_and_heatmap_are_written_as_png_and_pdf(extracted):
    extractor, embs, out = extracted
    written = extractor.plot_embs(embs, "umap", out, "pbmc", label="cell_type")
    written += extractor.plot_embs(embs, "heatmap", out, "pbmc", label="cell_type")
    assert sorted(p.name for p in written) == [
        "pbmc_heatmap_cell_type.pdf",
        "pbmc_heatmap_cell_type.png",
        "pbmc_umap_cell_type.pdf",
        "pbmc_umap_cell_type.png",
    ]
    for path in written:
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if path.suffix == ".png" else b"%PDF")


def test_gene_embeddings_average_every_occurrence(tiny_model_dir, tiny_config, tiny_weights, pbmc_dataset):
    dataset = pbmc_dataset.select(range(6))
    embs = EmbExtractor(emb_mode="gene", emb_layer=0, max_ncells=None, progress=False).extract_embs(
        tiny_model_dir, dataset
    )
    cells = dataset["input_ids"]
    states = reference_hidden_states(tiny_weights, tiny_config, cells, tiny_config.num_hidden_layers)
    tokens = np.concatenate(cells)
    stacked = np.concatenate(states)
    for row in (0, len(embs.meta) // 2, len(embs.meta) - 1):
        token = embs.meta["token_id"].iloc[row]
        np.testing.assert_allclose(embs.matrix[row], stacked[tokens == token].mean(axis=0), rtol=1e-4, atol=1e-5)
        assert embs.meta["n_cells"].iloc[row] == (tokens == token).sum()
        assert embs.meta["gene"].iloc[row].startswith("ENSG")


def test_cls_and_eos_are_left_out_of_the_mean_and_cls_mode_reads_position_0(tiny_model_dir, tiny_config, tiny_weights):
    """A V2-style dataset (<cls> genes <eos>) whose record names the special tokens."""
    rng = np.random.default_rng(0)
    cells = [[V2_CLS, *rng.choice(np.arange(10, 25000), n, replace=False).tolist(), V2_EOS] for n in (5, 12, 30)]
    dataset = v2_dataset(cells, tiny_config.vocab_size)
    last = tiny_config.num_hidden_layers
    states = reference_hidden_states(tiny_weights, tiny_config, cells, last)
    cell_mode = EmbExtractor(emb_mode="cell", emb_layer=0, max_ncells=None, progress=False)
    embs = cell_mode.extract_embs(tiny_model_dir, dataset)
    np.testing.assert_allclose(embs.matrix, np.stack([h[1:-1].mean(axis=0) for h in states]), rtol=1e-4, atol=1e-5)
    cls_mode = EmbExtractor(emb_mode="cls", emb_layer=0, max_ncells=None, progress=False)
    embs = cls_mode.extract_embs(tiny_model_dir, dataset)
    np.testing.assert_allclose(embs.matrix, np.stack([h[0] for h in states]), rtol=1e-4, atol=1e-5)


def test_cls_mode_on_v1_cells_and_bad_layers_are_refused(tiny_model_dir, pbmc_dataset):
    with pytest.raises(
        ValueError, match=r"emb_mode 'cls' \(the default, for V2 models\) needs cells that start with <cls>"
    ):
        EmbExtractor(emb_mode="cls", max_ncells=4, progress=False).extract_embs(tiny_model_dir, pbmc_dataset)
    with pytest.raises(ValueError, match="outside -2..0"):
        EmbExtractor(emb_layer=-3, max_ncells=4, progress=False).extract_embs(tiny_model_dir, pbmc_dataset)
    with pytest.raises(ValueError, match="counts back from the last layer"):
        EmbExtractor(emb_layer=1)
