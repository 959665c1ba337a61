"""The reference's EmbExtractor / InSilicoPerturber / InSilicoPerturberStats options added for issue 22, against the
numpy reference or values worked out in the test."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from mindformer_gf import reference
from mindformer_gf.tasks import EmbExtractor
from mindformer_gf.tasks.perturb import InSilicoPerturber, InSilicoPerturberStats, PerturbationInputError


def reference_states(weights, config, cell, layer):
    encoder = {k[len("bert.") :]: v for k, v in weights.items() if k.startswith("bert.")}
    ids = np.asarray(cell, np.int64)[None]
    _, hidden = reference.forward(encoder, ids, np.ones_like(ids), config, "BertModel")
    return hidden[layer][0].astype(np.float64)


@pytest.fixture(scope="module")
def few_cells(pbmc_dataset):
    return pbmc_dataset.select([0, 1, 2, 3, 4, 5])


def test_gene_emb_style_all_is_every_contextual_embedding(tiny_model_dir, tiny_config, tiny_weights, few_cells):
    layer = tiny_config.num_hidden_layers  # emb_layer=0
    every = EmbExtractor(emb_mode="gene", gene_emb_style="all", emb_layer=0, max_ncells=None, progress=False)
    embs = every.extract_embs(tiny_model_dir, few_cells)
    cells = [np.asarray(c) for c in few_cells["input_ids"]]
    assert embs.matrix.shape[0] == sum(c.size for c in cells)  # one row per (gene, cell)
    token = int(cells[2][3])
    holders = [i for i, c in enumerate(cells) if token in c]
    rows = embs.meta.index[embs.meta.token_id == token]
    assert list(embs.meta.Identifier[rows]) == list(range(len(holders)))
    for row, cell_index in zip(rows, holders, strict=True):
        states = reference_states(tiny_weights, tiny_config, cells[cell_index], layer)
        position = int(np.flatnonzero(cells[cell_index] == token)[0])
        np.testing.assert_allclose(embs.matrix[row], states[position], rtol=1e-4, atol=1e-5)
    pooled = EmbExtractor(emb_mode="gene", emb_layer=0, max_ncells=None, progress=False)
    mean = pooled.extract_embs(tiny_model_dir, few_cells)
    np.testing.assert_allclose(
        mean.matrix[list(mean.meta.token_id).index(token)], embs.matrix[rows].mean(axis=0), rtol=1e-5, atol=1e-6
    )


def test_cell_state_and_renamed_arguments(tiny_model_dir, tiny_config, tiny_weights, few_cells, tmp_path):
    layer = tiny_config.num_hidden_layers - 1
    extractor = EmbExtractor(emb_mode="cell", summary_stat="exact_median", max_ncells=None, progress=False)
    state = few_cells["cell_type"][0]
    summary = extractor.extract_embs(tiny_model_dir, few_cells, tmp_path, "state", cell_state={"cell_type": state})
    rows = [i for i, t in enumerate(few_cells["cell_type"]) if t == state]
    expected = np.median(
        [reference_states(tiny_weights, tiny_config, few_cells[i]["input_ids"], layer).mean(0) for i in rows], axis=0
    )
    np.testing.assert_allclose(summary, expected, rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "state.csv").exists()  # as the reference: a state's summary writes no table
    with pytest.warns(DeprecationWarning, match="model_dir=...\\) is now model_directory="):
        embs = extractor.extract_embs(model_dir=tiny_model_dir, dataset=few_cells, output_dir=tmp_path)
    assert (tmp_path / "embeddings.csv").is_file() and embs.matrix.shape[0] == len(few_cells)
    with pytest.raises(TypeError, match="both 'model_dir' and its reference name 'model_directory'"):
        extractor.extract_embs(tiny_model_dir, few_cells, model_dir=tiny_model_dir)


def test_get_state_embs_pickle_and_refusals(tiny_model_dir, few_cells, tmp_path):
    from mindformer_gf.safe_pickle import safe_load

    types = few_cells["cell_type"]
    states = {"state_key": "cell_type", "start_state": types[0], "goal_state": types[1], "alt_states": []}
    extractor = EmbExtractor(emb_mode="cell", summary_stat="exact_mean", max_ncells=None, progress=False)
    found = extractor.get_state_embs(states, tiny_model_dir, few_cells, tmp_path, "states", output_torch_embs=False)
    with open(tmp_path / "states.pkl", "rb") as handle:
        saved = safe_load(handle)
    assert set(saved) == {types[0], types[1]} and all(isinstance(v, list) for v in saved.values())
    np.testing.assert_allclose(saved[types[1]], found[types[1]], rtol=1e-12)
    # a reference script reads it with plain pickle and hands it to the perturber
    with open(tmp_path / "states.pkl", "rb") as handle:
        InSilicoPerturber(emb_mode="cell", cell_states_to_model=states, state_embs_dict=pickle.load(handle))
    with pytest.raises(ValueError, match="no t-digests are made here"):
        EmbExtractor(summary_stat="mean", save_tdigest=True)
    with pytest.raises(ValueError, match="cell_emb_style 'cls_pool'"):
        EmbExtractor(cell_emb_style="cls_pool")
    with pytest.raises(ValueError, match="num_classes=5 but the CellClassifier model has"):
        from mindformer_gf.tasks.embeddings import EmbExtractor as Extractor

        class Config:
            num_labels = 3

        class Encoder:
            config = Config()

        Extractor(model_type="CellClassifier", num_classes=5)._check_model_type(Encoder())


def test_plot_kwargs_dict(tiny_model_dir, few_cells, tmp_path):
    extractor = EmbExtractor(emb_mode="cell", emb_label=["cell_type"], max_ncells=None, progress=False)
    embs = extractor.extract_embs(tiny_model_dir, few_cells)
    written = extractor.plot_embs(embs, "heatmap", tmp_path, "p", kwargs_dict={"cmap": "viridis", "figsize": (4, 3)})
    assert [p.name for p in written] == ["p_heatmap_cell_type.png", "p_heatmap_cell_type.pdf"]
    with pytest.raises(ValueError, match=r"kwargs_dict \['linewidths'\] are not heatmap settings"):
        extractor.plot_embs(embs, "heatmap", tmp_path, "p", kwargs_dict={"linewidths": 0})


def test_perturber_model_version_and_clear_mem_ncells(tiny_model_dir, few_cells, tmp_path):
    with pytest.warns(UserWarning, match="'cls_and_gene' becomes 'cell_and_gene'"):
        v1 = InSilicoPerturber(emb_mode="cls_and_gene", model_version="V1")
    assert v1.emb_mode == "cell_and_gene"
    assert InSilicoPerturber(clear_mem_ncells=250).shard_cells == 25  # the reference flushes every ncells / 10
    assert InSilicoPerturber().shard_cells == 100 and InSilicoPerturber(shard_cells=7).shard_cells == 7
    with pytest.raises(PerturbationInputError, match="model_version must be 'V1' or 'V2'"):
        InSilicoPerturber(model_version="V3")
    with pytest.raises(PerturbationInputError, match="pass model_version='V1' or emb_mode 'cell'"):
        InSilicoPerturber(progress=False).perturb_data(tiny_model_dir, few_cells, tmp_path, "x")


def _table(values: dict, affected: str = "cell_emb") -> pd.DataFrame:
    rows = [(cell, p, affected, v) for p, vs in values.items() for cell, v in enumerate(vs)]
    return pd.DataFrame(rows, columns=["cell", "perturbed", "affected", "value"])


def _write_table(directory, frame: pd.DataFrame) -> None:
    directory.mkdir(parents=True)
    frame.to_parquet(directory / "part-00000.parquet")


def test_stats_find_tables_in_the_output_directory_and_take_null_dict_list(tmp_path):
    from scipy.stats import ranksums

    from mindformer_gf.tasks.perturb.perturber import GeneNames

    names = GeneNames.shipped()
    genes = [names.name_to_id[s] for s in ("CD14", "LYZ", "CD3E")]
    rng = np.random.default_rng(4)
    test = {g: rng.normal(0.9 - 0.05 * i, 0.02, size=6) for i, g in enumerate(genes)}
    null = {g: rng.normal(0.9, 0.02, size=5) for g in genes}
    # the perturber's output_directory with two runs' tables (the reference reads every result file there)
    _write_table(tmp_path / "isp" / "run_a.parquet", _table({g: test[g][:3] for g in genes}))
    _write_table(tmp_path / "isp" / "run_b.parquet", _table({g: test[g][3:] for g in genes}))
    stats = InSilicoPerturberStats(mode="vs_null", model_version="V1")
    result = stats.get_stats(tmp_path / "isp", None, tmp_path, "vs", null_dict_list=[_table(null)])
    frame = result.table.set_index("Ensembl_ID").loc[genes]
    np.testing.assert_allclose(frame.Test_vs_null_pval, [ranksums(test[g], null[g]).pvalue for g in genes])
    assert list(frame.N_Detections_test) == [6, 6, 6]
    assert stats.token_to_gene_name(names.token[genes[0]]) == "CD14"
    assert stats.token_to_gene_name((names.token[genes[0]], names.token[genes[1]])) == ("CD14", "LYZ")
    assert np.isnan(stats.token_to_gene_name(10**7))
    with pytest.raises(PerturbationInputError, match="vs_null needs the null run"):
        stats.get_stats(tmp_path / "isp", None, None, "x")
    (tmp_path / "reference_run").mkdir()
    (tmp_path / "reference_run" / "x_raw.pickle").write_bytes(b"")
    with pytest.raises(PerturbationInputError, match=r"holds the reference's \*_raw.pickle files"):
        stats.get_stats(tmp_path / "reference_run", None, None, "x", null_dict_list=_table(null))
    with pytest.raises(
        PerturbationInputError, match="model_version 'V2' \\(the default\\) needs token_dictionary_file"
    ):
        InSilicoPerturberStats()


def test_apply_additional_filters_selects_the_cells_to_perturb(pbmc_dataset):
    types = np.asarray(pbmc_dataset["cell_type"])
    gene = int(pbmc_dataset[0]["input_ids"][0])
    from mindformer_gf.tasks.perturb.perturber import GeneNames

    ensembl = GeneNames.shipped().id_of(gene)
    states = {"state_key": "cell_type", "start_state": types[0], "goal_state": types[1], "alt_states": []}
    perturber = InSilicoPerturber(
        emb_mode="cell",
        genes_to_perturb=[ensembl],
        cell_states_to_model=states,
        state_embs_dict={types[0]: [0.0], types[1]: [0.0]},
        max_ncells=5,
    )
    chosen = perturber.apply_additional_filters(pbmc_dataset)
    holders = [i for i, c in enumerate(pbmc_dataset["input_ids"]) if gene in c and types[i] == types[0]]
    assert len(chosen) == min(5, len(holders))
    assert all(gene in c for c in chosen["input_ids"]) and set(chosen["cell_type"]) == {types[0]}
    assert chosen["length"] == sorted(chosen["length"], reverse=True)  # longest first, as the reference
