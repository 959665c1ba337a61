"""The reference's examples/extract_and_plot_cell_embeddings.ipynb, with only the import changed: the notebook's
EmbExtractor, extract_embs and plot_embs calls with its keywords, on the shipped PBMC cells (three cell types for
the notebook's three cardiomyocyte types, a "disease" column in its values) and a tiny random 3-class cell
classifier; the embeddings are checked against the numpy reference's forward pass, mean-pooled in the test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from datasets import load_from_disk
from helpers.notebooks import (
    CELL_TYPES,
    encoder_weights,
    pbmc_disease_dataset,
    reference_cell_embedding,
    tiny_classifier_dir,
)

from mindformer_gf import EmbExtractor  # the notebook: from geneformer import EmbExtractor

GENES_PER_CELL = 32


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings_notebook")
    input_data = pbmc_disease_dataset(root, GENES_PER_CELL)
    model_dir = tiny_classifier_dir(root, GENES_PER_CELL)
    output_directory = root / "output_directory"
    with pytest.warns(UserWarning, match="emb_mode 'cls' becomes 'cell'"):  # model_version V1, as the reference
        embex = EmbExtractor(
            model_type="CellClassifier",
            num_classes=3,
            filter_data={"cell_type": CELL_TYPES},
            max_ncells=1000,
            emb_layer=0,
            emb_label=["disease", "cell_type"],
            labels_to_plot=["disease"],
            forward_batch_size=200,
            model_version="V1",
            nproc=16,
        )
    embs = embex.extract_embs(str(model_dir), str(input_data), str(output_directory), "output_prefix")
    return embex, embs, input_data, model_dir, output_directory


def test_embeddings_equal_the_numpy_reference(notebook_run):
    embex, embs, input_data, model_dir, output_directory = notebook_run
    dataset = load_from_disk(str(input_data))
    chosen = np.flatnonzero(np.isin(dataset["cell_type"], CELL_TYPES))
    assert chosen.size == 255  # every cell of the three types (fewer than max_ncells)
    frame = pd.read_csv(output_directory / "output_prefix.csv")
    np.testing.assert_array_equal(frame["dataset_row"], chosen)
    assert list(frame["disease"]) == [dataset["disease"][i] for i in chosen]
    assert list(frame["cell_type"]) == [dataset["cell_type"][i] for i in chosen]
    weights, config = encoder_weights(model_dir)
    layer = config.num_hidden_layers + 0  # emb_layer=0: the last layer
    for position in (0, 100, 254):
        expected = reference_cell_embedding(weights, config, dataset[int(chosen[position])]["input_ids"], layer)
        np.testing.assert_allclose(embs.matrix[position], expected, rtol=1e-4, atol=1e-5)
    dims = [str(i) for i in range(config.hidden_size)]
    np.testing.assert_allclose(frame[dims].to_numpy(), embs.matrix, rtol=1e-6)


def test_heatmap_as_the_notebook(notebook_run):
    embex, embs, _, _, output_directory = notebook_run
    written = embex.plot_embs(
        embs=embs, plot_style="heatmap", output_directory=str(output_directory), output_prefix="emb_plot"
    )
    assert {p.name for p in written} == {"emb_plot_heatmap_disease.png", "emb_plot_heatmap_disease.pdf"}
    assert all(p.stat().st_size > 1000 for p in written)


@pytest.mark.slow  # UMAP compiles its numba kernels on first use
def test_umap_as_the_notebook(notebook_run):
    embex, embs, _, _, output_directory = notebook_run
    written = embex.plot_embs(
        embs=embs, plot_style="umap", output_directory=str(output_directory), output_prefix="emb_plot"
    )
    assert {p.name for p in written} == {"emb_plot_umap_disease.png", "emb_plot_umap_disease.pdf"}


def test_torch_embeddings_and_the_reference_layout_table(notebook_run):
    torch = pytest.importorskip("torch")
    embex, embs, input_data, model_dir, output_directory = notebook_run
    # output_torch_embs: the reference returns (table, tensor); the table here is our Embeddings
    table, tensor = embex.extract_embs(model_dir, input_data, output_directory / "again", "t", output_torch_embs=True)
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_array_equal(tensor.numpy(), embs.matrix)
    # plot_embs also takes a table in the reference's layout: dimension columns, then the emb_label columns
    reference_layout = pd.concat(
        [pd.DataFrame(embs.matrix), embs.meta[["disease", "cell_type"]].reset_index(drop=True)], axis=1
    )
    written = embex.plot_embs(reference_layout, "heatmap", output_directory, "from_table", max_ncells_to_plot=50)
    assert written[0].name == "from_table_heatmap_disease.png"
