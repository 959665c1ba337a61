"""In silico perturbation against a direct computation with the numpy reference (float64) on the tiny random model:
each perturbed cell is built by hand in the test, run through `reference.forward`, and compared with the original
gene by gene, as the reference package does."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from mindformer_gf import reference
from mindformer_gf.tasks.perturb import InSilicoPerturber, PerturbationInputError, read_table

GENES_PER_CELL = 10
ROWS = [3, 650, 17, 400, 99]  # five PBMC cells of several types


def short_dataset(pbmc_dataset, rows=ROWS, n_genes=GENES_PER_CELL, lengths=None):
    """The PBMC cells `rows` cut to their top `n_genes` genes (or `lengths[i]`), keeping the tokenizer's record."""
    from datasets import Dataset

    sub = pbmc_dataset.select(rows)
    n = lengths or [n_genes] * len(rows)
    ids = [list(c[:k]) for c, k in zip(sub["input_ids"], n, strict=True)]
    info = copy.deepcopy(pbmc_dataset.info)
    info.features = None
    return Dataset.from_dict(
        {"input_ids": ids, "length": [len(c) for c in ids], "cell_type": sub["cell_type"]}, info=info
    )


def hidden(weights, config, tokens, layer):
    """The reference's hidden state `layer` of one cell (no padding), float64."""
    encoder_weights = {k[len("bert.") :]: v for k, v in weights.items() if k.startswith("bert.")}
    ids = np.asarray(tokens, np.int64)[None]
    _, states = reference.forward(encoder_weights, ids, np.ones_like(ids), config, "BertModel")
    return states[layer][0]


def cos_rows(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


_ENCODERS = {}


def run(model_dir, dataset, out, prefix="run", **options):
    """The perturber's table; runs share one loaded encoder, hence its compiled graphs (one per padded width)."""
    from mindformer_gf.tasks.embeddings import load_encoder

    options.setdefault("progress", False)
    options.setdefault("forward_batch_size", 8)
    options.setdefault("num_buckets", 1)
    if str(model_dir) not in _ENCODERS:
        _ENCODERS[str(model_dir)] = load_encoder(model_dir)
    encoder = _ENCODERS[str(model_dir)]
    path = InSilicoPerturber(**options).perturb_data(model_dir, dataset, out, prefix, encoder=encoder)
    return read_table(path)


def ensembl_names():
    from mindformer_gf.tokenizer import load_gene_dictionaries

    return {v: k for k, v in load_gene_dictionaries("V1").token.items()}


@pytest.fixture(scope="module")
def cells(pbmc_dataset):
    return short_dataset(pbmc_dataset)


@pytest.mark.parametrize("emb_layer", [-1, 0])
def test_delete_all_is_the_mean_of_gene_matched_cosines(
    tiny_model_dir, tiny_config, tiny_weights, cells, tmp_path, emb_layer
):
    table = run(tiny_model_dir, cells, tmp_path, emb_mode="cell_and_gene", emb_layer=emb_layer, emb_label=["cell_type"])
    names = ensembl_names()
    layer = tiny_config.num_hidden_layers + emb_layer
    for row in (0, 3):
        tokens = np.asarray(cells[row]["input_ids"])
        original = hidden(tiny_weights, tiny_config, tokens, layer)
        for i in (0, 4, GENES_PER_CELL - 1):
            keep = np.arange(tokens.size) != i
            perturbed = hidden(tiny_weights, tiny_config, tokens[keep], layer)
            per_gene = cos_rows(perturbed, original[keep])  # row j pairs with original j (j < i) or j + 1
            mine = table[(table.cell == row) & (table.perturbed == names[tokens[i]])]
            cell_emb = mine[mine.affected == "cell_emb"].value.to_numpy()
            np.testing.assert_allclose(cell_emb, [per_gene.mean()], rtol=1e-4, atol=1e-5)
            genes = mine[mine.affected != "cell_emb"]
            assert list(genes.affected) == [names[t] for t in tokens[keep]]
            np.testing.assert_allclose(genes.value.to_numpy(), per_gene, rtol=1e-4, atol=1e-5)
    assert set(table.cell) == set(range(len(ROWS)))
    assert (table.groupby("cell").perturbed.nunique() == GENES_PER_CELL).all()
    assert (table.cell_type.to_numpy() == np.asarray(cells["cell_type"])[table.cell]).all()


def test_overexpress_inserts_the_group_in_front_for_every_cell(
    tiny_model_dir, tiny_config, tiny_weights, pbmc_dataset, tmp_path
):
    """A group whose genes occur 0, 1 or 2 times across the cells of one batch (the reference crashes there)."""
    dataset = short_dataset(pbmc_dataset)
    tokens = [np.asarray(c) for c in dataset["input_ids"]]
    names = ensembl_names()
    # gene a from cell 0 (position 5), gene b from cell 1 (position 2): cell 0 has a (maybe b), cell 1 b, ...
    a, b = int(tokens[0][5]), int(tokens[1][2])
    group = [names[a], names[b]]
    table = run(tiny_model_dir, dataset, tmp_path, perturb_type="overexpress", genes_to_perturb=group)
    layer = tiny_config.num_hidden_layers - 1
    present = [int(np.isin([a, b], t).sum()) for t in tokens]
    assert len(set(present)) > 1
    assert set(table.cell) == set(range(len(ROWS)))  # cells lacking the genes are kept
    for row, cell in enumerate(tokens):
        rest = cell[~np.isin(cell, [a, b])]
        perturbed = hidden(
            tiny_weights, tiny_config, np.concatenate([[a, b], rest])[: tiny_config.max_position_embeddings], layer
        )
        original = hidden(tiny_weights, tiny_config, cell, layer)[~np.isin(cell, [a, b])]
        expected = cos_rows(perturbed[2:], original).mean()
        value = table[(table.cell == row)].value.to_numpy()
        assert list(table[table.cell == row].perturbed) == ["+".join(group)]
        np.testing.assert_allclose(value, [expected], rtol=1e-4, atol=1e-5)


def test_state_shifts_use_the_full_original_cell(tiny_model_dir, tiny_config, tiny_weights, pbmc_dataset, tmp_path):
    dataset = short_dataset(pbmc_dataset, rows=[3, 17, 650, 400])
    types = list(dataset["cell_type"])
    rng = np.random.default_rng(0)
    states = {t: rng.normal(size=tiny_config.hidden_size) for t in set(types)}
    start, goal = types[0], next(t for t in types if t != types[0])
    model = {"state_key": "cell_type", "start_state": start, "goal_state": goal, "alt_states": []}
    table = run(
        tiny_model_dir, dataset, tmp_path, cell_states_to_model=model, state_embs_dict=states, emb_label=["cell_type"]
    )
    names = ensembl_names()
    layer = tiny_config.num_hidden_layers - 1
    starts = [r for r, t in enumerate(types) if t == start]
    assert set(table.cell) == set(starts) and set(table.affected) == {start, goal}
    for row in starts:
        tokens = np.asarray(dataset[row]["input_ids"])
        original = hidden(tiny_weights, tiny_config, tokens, layer).mean(0)  # the deleted gene included
        for i in (0, 7):
            perturbed = hidden(tiny_weights, tiny_config, np.delete(tokens, i), layer).mean(0)
            for state in (start, goal):
                expected = cos(perturbed, states[state]) - cos(original, states[state])
                mine = table[(table.cell == row) & (table.perturbed == names[tokens[i]]) & (table.affected == state)]
                np.testing.assert_allclose(mine.value.to_numpy(), [expected], rtol=1e-4, atol=1e-6)


def test_batch_size_and_buckets_do_not_change_results(tiny_model_dir, pbmc_dataset, tmp_path):
    dataset = short_dataset(pbmc_dataset, lengths=[10, 6, 9, 3, 8])
    one = run(tiny_model_dir, dataset, tmp_path / "a", forward_batch_size=3, emb_mode="cell_and_gene")
    many = run(tiny_model_dir, dataset, tmp_path / "b", forward_batch_size=8, emb_mode="cell_and_gene")
    key = ["cell", "perturbed", "affected"]
    one, many = one.sort_values(key).reset_index(drop=True), many.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(one[key], many[key])
    np.testing.assert_allclose(one.value, many.value, rtol=1e-5, atol=1e-6)


def test_bad_input_each_has_its_own_message(tiny_model_dir, cells, tmp_path):
    with pytest.raises(PerturbationInputError, match="unknown gene 'NOTAGENE'"):
        run(tiny_model_dir, cells, tmp_path, genes_to_perturb=["NOTAGENE"])
    with pytest.raises(PerturbationInputError, match="occur in no cell"):
        run(tiny_model_dir, cells, tmp_path, genes_to_perturb=["ENSG00000141510"])  # TP53: not in these cells
    model = {"state_key": "no_such_column", "start_state": "a", "goal_state": "b"}
    with pytest.raises(PerturbationInputError, match="no state column 'no_such_column'"):
        run(tiny_model_dir, cells, tmp_path, cell_states_to_model=model, state_embs_dict={"a": [0], "b": [0]})
    model = {"state_key": "cell_type", "start_state": "Dendritic", "goal_state": "Martian"}
    with pytest.raises(PerturbationInputError, match=r"\['Martian'\] do not occur in column 'cell_type'"):
        run(
            tiny_model_dir,
            cells,
            tmp_path,
            cell_states_to_model=model,
            state_embs_dict={"Dendritic": [0], "Martian": [0]},
        )
    with pytest.raises(PerturbationInputError, match="state_embs_dict has no embedding"):
        InSilicoPerturber(cell_states_to_model=model, state_embs_dict={"Martian": [0]})
