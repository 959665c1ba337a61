"""The reference's steps inside perturb_data, called by the user: the four isp_perturb_* paths on the cells of
apply_additional_filters equal perturb_data's table (same batches, hence bit for bit; the oracle of perturb_data itself
is the numpy reference, tests/tasks/test_perturb.py), and update_perturbation_dictionary against dictionaries worked
out by hand."""

from __future__ import annotations

import copy
from collections import Counter, defaultdict

import mindspore as ms
import numpy as np
import pandas as pd
import pytest
from helpers.tasks import V2_CLS, V2_EOS, v2_dataset

from mindformer_gf.tasks.perturb import InSilicoPerturber, PerturbationInputError, read_table
from mindformer_gf.tokenizer import load_gene_dictionaries

ROWS = [3, 650, 17, 400, 99, 250, 12]  # seven PBMC cells of several types
GENES_PER_CELL = 10


def cells_with_row(pbmc_dataset, rows=ROWS, n_genes=GENES_PER_CELL, v2=False, vocab_size=None):
    """The PBMC cells `rows` cut to their top `n_genes` genes (framed by <cls> ... <eos> with `v2`), with a column
    `row` = the row in this dataset, carried into the tables as a label to map filtered rows back."""
    from datasets import Dataset

    sub = pbmc_dataset.select(rows)
    ids = [list(c[:n_genes]) for c in sub["input_ids"]]
    if v2:
        dataset = v2_dataset([[V2_CLS, *c, V2_EOS] for c in ids], vocab_size)
        return dataset.add_column("row", list(range(len(rows)))).add_column("cell_type", list(sub["cell_type"]))
    info = copy.deepcopy(pbmc_dataset.info)
    info.features = None
    columns = {"input_ids": ids, "length": [len(c) for c in ids], "cell_type": sub["cell_type"]}
    return Dataset.from_dict({**columns, "row": list(range(len(rows)))}, info=info)


_ENCODERS = {}


def encoder_of(model_dir):
    from mindformer_gf.finetune.task_model import load_encoder

    if str(model_dir) not in _ENCODERS:
        _ENCODERS[str(model_dir)] = load_encoder(model_dir)
    return _ENCODERS[str(model_dir)]


def names():
    return {v: k for k, v in load_gene_dictionaries("V1").token.items()}


def two_shared_genes(dataset):
    """The Ensembl IDs of the two genes held by the most cells (so a delete keeps several cells, not all)."""
    counts = Counter(t for c in dataset["input_ids"] for t in set(c) if t not in (V2_CLS, V2_EOS))
    (a, _), (b, _) = counts.most_common(2)
    return [names()[a], names()[b]]


def both_ways(model_dir, dataset, tmp_path, method, layer_to_quant=None, pass_directory=False, **options):
    """(perturb_data's table, the table of `method` on apply_additional_filters' cells, those cells)."""
    options = {"progress": False, "forward_batch_size": 4, "num_buckets": 2, "emb_label": ["row"], **options}
    encoder = encoder_of(model_dir)
    isp = InSilicoPerturber(**options)
    full = read_table(isp.perturb_data(model_dir, dataset, tmp_path / "full", "run", encoder=encoder))
    filtered = isp.apply_additional_filters(dataset)
    layer = encoder.config.num_hidden_layers + isp.emb_layer if layer_to_quant is None else layer_to_quant
    prefix = tmp_path / "steps" / f"in_silico_{isp.perturb_type}_run"
    path = getattr(isp, method)(model_dir if pass_directory else encoder, filtered, layer, prefix)
    assert path == tmp_path / "steps" / f"in_silico_{isp.perturb_type}_run.parquet"
    return full, read_table(path), filtered


def assert_same_table(full, mine, filtered):
    """`cell` of `mine` is the row of the filtered cells; mapped to the dataset's row, every column equals."""
    assert (full.cell == full.row).all() and len(full) > 0
    np.testing.assert_array_equal(mine.row, np.asarray(filtered["row"])[mine.cell])
    pd.testing.assert_frame_equal(mine.assign(cell=mine.row), full, check_exact=True)


def test_set_delete_a_group_equals_perturb_data(tiny_model_dir, pbmc_dataset, tmp_path):
    dataset = cells_with_row(pbmc_dataset)
    group = two_shared_genes(dataset)
    full, mine, filtered = both_ways(
        tiny_model_dir, dataset, tmp_path, "isp_perturb_set",
        genes_to_perturb=group, emb_mode="cell_and_gene", max_ncells=5,
    )  # fmt: skip
    assert 1 < len(filtered) < len(dataset)  # the selection dropped cells without the group, then kept max_ncells
    assert set(full.perturbed) == {"+".join(group)} and len(set(full.affected)) > 1  # per-gene rows too
    assert_same_table(full, mine, filtered)


def test_set_overexpress_equals_perturb_data_from_a_model_directory(tiny_model_dir, pbmc_dataset, tmp_path):
    dataset = cells_with_row(pbmc_dataset)
    full, mine, filtered = both_ways(
        tiny_model_dir, dataset, tmp_path, "isp_perturb_set", pass_directory=True,
        perturb_type="overexpress", genes_to_perturb=two_shared_genes(dataset)[:1], emb_mode="cell",
    )  # fmt: skip
    assert len(filtered) == len(dataset)  # overexpress keeps cells lacking the gene
    assert_same_table(full, mine, filtered)


def test_all_with_cell_states_equals_perturb_data(tiny_model_dir, tiny_config, pbmc_dataset, tmp_path):
    dataset = cells_with_row(pbmc_dataset)
    types = list(dataset["cell_type"])
    start = Counter(types).most_common(1)[0][0]
    goal = next(t for t in types if t != start)
    rng = np.random.default_rng(0)
    states = {t: rng.normal(size=tiny_config.hidden_size) for t in (start, goal)}
    model = {"state_key": "cell_type", "start_state": start, "goal_state": goal, "alt_states": []}
    full, mine, filtered = both_ways(
        tiny_model_dir, dataset, tmp_path, "isp_perturb_all",
        emb_mode="cell", cell_states_to_model=model, state_embs_dict=states,
    )  # fmt: skip
    assert set(filtered["cell_type"]) == {start} and set(full.affected) == {start, goal}
    assert_same_table(full, mine, filtered)


def test_all_at_the_last_layer_equals_perturb_data_with_emb_layer_0(tiny_model_dir, pbmc_dataset, tmp_path):
    dataset = cells_with_row(pbmc_dataset, rows=ROWS[:3], n_genes=6)
    layers = encoder_of(tiny_model_dir).config.num_hidden_layers
    full, mine, filtered = both_ways(
        tiny_model_dir, dataset, tmp_path, "isp_perturb_all", layer_to_quant=layers,
        emb_mode="cell_and_gene", emb_layer=0,
    )  # fmt: skip
    assert_same_table(full, mine, filtered)
    # and another layer is another result: the layer given is the one read
    isp = InSilicoPerturber(progress=False, forward_batch_size=4, num_buckets=2, emb_label=["row"], emb_mode="cell")
    lower = read_table(isp.isp_perturb_all(encoder_of(tiny_model_dir), filtered, layers - 1, tmp_path / "lower"))
    cell_rows = mine[mine.affected == "cell_emb"].reset_index(drop=True)
    assert (lower[["cell", "perturbed"]] == cell_rows[["cell", "perturbed"]]).all().all()
    assert not np.allclose(lower.value, cell_rows.value)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("isp_perturb_set_special", {"emb_mode": "cls_and_gene", "max_ncells": 4}),
        ("isp_perturb_all_special", {"emb_mode": "cls", "cell_inds_to_perturb": {"start": 1, "end": 4}}),
    ],
)
def test_special_paths_on_cls_cells_equal_perturb_data(
    tiny_model_dir, tiny_config, pbmc_dataset, tmp_path, method, options
):
    dataset = cells_with_row(pbmc_dataset, v2=True, vocab_size=tiny_config.vocab_size)
    if method == "isp_perturb_set_special":
        options = {**options, "genes_to_perturb": two_shared_genes(dataset)[:1]}
    full, mine, filtered = both_ways(tiny_model_dir, dataset, tmp_path, method, **options)
    assert 1 < len(filtered) < len(dataset)
    assert_same_table(full, mine, filtered)


def test_each_path_refuses_the_others_settings_and_a_bad_layer(tiny_model_dir, pbmc_dataset, tmp_path):
    dataset = cells_with_row(pbmc_dataset, rows=ROWS[:2])
    encoder = encoder_of(tiny_model_dir)
    group = InSilicoPerturber(genes_to_perturb=two_shared_genes(dataset)[:1], emb_mode="cell", progress=False)
    with pytest.raises(PerturbationInputError, match="call isp_perturb_set "):
        group.isp_perturb_all(encoder, dataset, 1, tmp_path / "a")
    with pytest.raises(PerturbationInputError, match="call isp_perturb_set "):
        group.isp_perturb_set_special(encoder, dataset, 1, tmp_path / "a")
    every = InSilicoPerturber(emb_mode="cls_and_gene", progress=False)
    with pytest.raises(PerturbationInputError, match="call isp_perturb_all_special "):
        every.isp_perturb_set(encoder, dataset, 1, tmp_path / "a")
    with pytest.raises(PerturbationInputError, match="layer_to_quant 3 is not a hidden state of this 2-layer"):
        group.isp_perturb_set(encoder, dataset, 3, tmp_path / "a")
    with pytest.raises(PerturbationInputError, match="model must be a model directory or a loaded model"):
        group.isp_perturb_set(object(), dataset, 1, tmp_path / "a")
    assert not (tmp_path / "a.parquet").exists()


def test_update_perturbation_dictionary_worked_by_hand():
    token = load_gene_dictionaries("V1").token
    a, b = "ENSG00000141510", "ENSG00000012048"  # TP53, BRCA1
    pair = InSilicoPerturber(genes_to_perturb=[a, b])
    d = defaultdict(list)
    assert pair.update_perturbation_dictionary(d, np.array([[0.5], [0.25], [0.125]])) is d
    assert dict(d) == {((token[a], token[b]), "cell_emb"): [0.5, 0.25, 0.125]}
    pair.update_perturbation_dictionary(d, np.array([[0.75]]))  # one cell left: squeezed to a scalar, appended
    assert dict(d) == {((token[a], token[b]), "cell_emb"): [0.5, 0.25, 0.125, 0.75]}

    one = InSilicoPerturber(genes_to_perturb=[a])  # one gene: its token id, not a 1-tuple
    assert one.update_perturbation_dictionary({}, [[0.5], [1.0]]) == {(token[a], "cell_emb"): [0.5, 1.0]}

    every = InSilicoPerturber()  # genes_to_perturb="all": value i under gene_list[i]
    x = ms.Tensor(np.array([0.1, 0.2, 0.3], np.float32))
    got = every.update_perturbation_dictionary({(7, "cell_emb"): [0.9]}, x, gene_list=[5, 7, 5])
    f = [float(np.float32(v)) for v in (0.1, 0.2, 0.3)]  # float32 values as Python floats, as torch's tolist
    assert got == {(5, "cell_emb"): [f[0], f[2]], (7, "cell_emb"): [0.9, f[1]]}

    with pytest.raises(PerturbationInputError, match="3 rows but gene_list 2 genes"):
        every.update_perturbation_dictionary({}, np.zeros(3), gene_list=[1, 2])
    with pytest.raises(PerturbationInputError, match="give gene_list"):
        every.update_perturbation_dictionary({}, np.zeros(3))


def test_update_perturbation_dictionary_uses_the_runs_token_ids(tiny_model_dir, pbmc_dataset, tmp_path):
    """After a run the group's token ids are those of the dataset's dictionary (the reference's tokens_to_perturb)."""
    dataset = cells_with_row(pbmc_dataset, rows=ROWS[:3], n_genes=4)
    gene = two_shared_genes(dataset)[0]
    isp = InSilicoPerturber(genes_to_perturb=[gene], perturb_type="overexpress", emb_mode="cell", progress=False)
    isp.isp_perturb_set(encoder_of(tiny_model_dir), dataset, 1, tmp_path / "x")
    assert isp.tokens_to_perturb == [load_gene_dictionaries("V1").token[gene]]
    assert isp.update_perturbation_dictionary({}, [[0.5]]) == {(isp.tokens_to_perturb[0], "cell_emb"): [0.5]}
