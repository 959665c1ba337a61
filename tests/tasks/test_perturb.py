"""In silico perturbation against a direct computation with the numpy reference (float64) on the tiny random model:
each perturbed cell is built by hand in the test, run through `reference.forward`, and compared with the original
gene by gene, as the reference package does."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from helpers.tasks import V2_CLS, V2_EOS, v2_dataset

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


def run(model_dir, dataset, out, prefix="run", resume=False, **options):
    """The perturber's table; runs share one loaded encoder, hence its compiled graphs (one per padded width)."""
    from mindformer_gf.finetune.task_model import load_encoder

    options.setdefault("progress", False)
    options.setdefault("emb_mode", "cell")  # V1 datasets: the reference's default "cls" is for V2 models
    options.setdefault("forward_batch_size", 8)
    options.setdefault("num_buckets", 1)
    if str(model_dir) not in _ENCODERS:
        _ENCODERS[str(model_dir)] = load_encoder(model_dir)
    encoder = _ENCODERS[str(model_dir)]
    path = InSilicoPerturber(**options).perturb_data(model_dir, dataset, out, prefix, resume=resume, encoder=encoder)
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
    # one graph per (rows, padded width), one width here: the copies' batches of 3 and 8 rows; the originals of
    # cells 0-2 (a window of 25 copies >= 8 batches of 3) in 3 rows, of cells 3-4 in 2 rows (the power of two that
    # holds them), of all five (one window at batch 8) in 8
    from mindformer_gf.tasks.perturb.engine import perturbed_forward

    forward = perturbed_forward(_ENCODERS[str(tiny_model_dir)], 1, "mean", True)
    assert len(forward.compile_cache) == 3


def test_original_rows_by_hand():
    from mindformer_gf.tasks.perturb.engine import original_rows

    assert [original_rows(n, 100) for n in (1, 2, 3, 4, 5, 64, 65, 100)] == [1, 2, 4, 4, 8, 64, 100, 100]
    assert [original_rows(n, 6) for n in (1, 3, 4, 5, 6)] == [1, 4, 4, 6, 6]
    for bad in (0, 7):
        with pytest.raises(ValueError, match="does not fit 6 rows"):
            original_rows(bad, 6)


def test_originals_in_fewer_rows_match_a_full_batch(tiny_model_dir, tiny_config, tiny_weights, cells, monkeypatch):
    """The originals' states from a batch of as many rows as they need equal a full batch's within float32 rounding
    and the numpy reference's within 1e-5; the batches have the rows `original_rows` says."""
    from mindformer_gf.data.buckets import choose_bucket_widths
    from mindformer_gf.finetune.task_model import load_encoder
    from mindformer_gf.tasks.perturb import engine as engine_module

    if str(tiny_model_dir) not in _ENCODERS:
        _ENCODERS[str(tiny_model_dir)] = load_encoder(tiny_model_dir)
    tokens = [np.asarray(c, np.int64) for c in cells["input_ids"]][:3]
    buckets = choose_bucket_widths(np.asarray([len(t) for t in tokens]), 1, tiny_config.max_position_embeddings)
    batch = 8
    engine = engine_module.PerturbationEngine(_ENCODERS[str(tiny_model_dir)], 1, "mean", True, batch, buckets, 0, [])
    rows_run = []
    pad_cells = engine_module.pad_cells

    def recording(batch_cells, width, pad_token_id=0, rows=None):
        rows_run.append(rows)
        return pad_cells(batch_cells, width, pad_token_id, rows=rows)

    monkeypatch.setattr(engine_module, "pad_cells", recording)
    states = engine.original_states(tokens)
    assert rows_run == [4]  # three cells: 4 rows, not 8
    full = engine._forward(buckets.widths[0], tokens, keep_hidden=True)[-1]
    assert rows_run[-1] == batch
    for i, t in enumerate(tokens):
        np.testing.assert_allclose(states[i], full[i, : t.size], rtol=0, atol=1e-6)
        np.testing.assert_allclose(states[i], hidden(tiny_weights, tiny_config, t, 1), rtol=1e-5, atol=1e-5)


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


def test_quartile_moves_worked_out_by_hand():
    from mindformer_gf.tasks.perturb.plan import CellLayout, quartile_target, shift_rank

    # 8 genes: quartile 1 = positions 0-1, 2 = 2-3, 3 = 4-5, 4 = 6-7; middles (2q - 1) * 8 // 8 = 1, 3, 5, 7
    assert [quartile_target(p, 8, 1, "activate") for p in range(8)] == [0, 0, 1, 1, 3, 3, 5, 5]
    assert [quartile_target(p, 8, 2, "inhibit") for p in range(8)] == [5, 5, 7, 7, 7, 7, 7, 7]
    assert [quartile_target(p, 8, 3, "activate") for p in range(8)] == [0] * 6 + [1, 1]
    layout = CellLayout.of(np.asarray([2, 10, 11, 12, 13, 14, 15, 16, 17, 3]), cls_id=2, eos_id=3)  # V2: <cls>, <eos>
    moved = shift_rank(layout, 6, 1, "activate")  # gene 16 (quartile 4) to the middle of quartile 3
    assert moved.tokens.tolist() == [2, 10, 11, 12, 13, 14, 16, 15, 17, 3]
    assert moved.source.tolist() == [-1, 1, 2, 3, 4, 5, 7, 6, 8, -1]
    assert moved.compared.tolist() == [False, True, True, True, True, True, False, True, True, False]
    down = shift_rank(layout, 2, 2, "inhibit")  # gene 12 (quartile 2) to the middle of quartile 4: the end
    assert down.tokens.tolist() == [2, 10, 11, 13, 14, 15, 16, 17, 12, 3]


def test_activate_and_combos_against_the_reference(tiny_model_dir, tiny_config, tiny_weights, cells, tmp_path):
    names = ensembl_names()
    layer = tiny_config.num_hidden_layers - 1
    tokens = np.asarray(cells[1]["input_ids"])
    original = hidden(tiny_weights, tiny_config, tokens, layer)
    one_cell = cells.select([1])
    moved = run(tiny_model_dir, one_cell, tmp_path / "a", perturb_type="activate", perturb_rank_shift=1)
    # gene at position 9 of 10 (quartile 1 + 36 // 10 = 4) -> middle of quartile 3: (5 * 10) // 8 = 6
    order = [0, 1, 2, 3, 4, 5, 9, 6, 7, 8]
    perturbed = hidden(tiny_weights, tiny_config, tokens[order], layer)
    expected = np.mean([cos(perturbed[j], original[order[j]]) for j in range(10) if order[j] != 9])
    value = moved[moved.perturbed == names[tokens[9]]].value.to_numpy()
    np.testing.assert_allclose(value, [expected], rtol=1e-4, atol=1e-5)
    assert len(moved) == 9  # activate skips the first gene, as the reference does

    anchor = names[tokens[3]]
    combos = run(tiny_model_dir, one_cell, tmp_path / "b", combos=1, anchor_gene=anchor)
    assert len(combos) == 9 and all(p.startswith(anchor + "+") for p in combos.perturbed)
    keep = ~np.isin(np.arange(10), [3, 7])
    perturbed = hidden(tiny_weights, tiny_config, tokens[keep], layer)
    value = combos[combos.perturbed == f"{anchor}+{names[tokens[7]]}"].value.to_numpy()
    np.testing.assert_allclose(value, [cos_rows(perturbed, original[keep]).mean()], rtol=1e-4, atol=1e-5)


def test_v2_cells_keep_cls_and_eos_in_place(tiny_model_dir, tiny_config, tiny_weights, tmp_path):
    cls_id, eos_id = V2_CLS, V2_EOS
    rng = np.random.default_rng(0)
    max_genes = tiny_config.max_position_embeddings - 2
    cells = [[cls_id, *rng.choice(np.arange(10, 25000), n, replace=False).tolist(), eos_id] for n in (6, max_genes)]
    dataset = v2_dataset(cells, tiny_config.vocab_size)
    names = ensembl_names()
    layer = tiny_config.num_hidden_layers - 1
    table = run(tiny_model_dir, dataset.select([0]), tmp_path / "a", emb_mode="cls_and_gene")
    tokens = np.asarray(cells[0])
    original = hidden(tiny_weights, tiny_config, tokens, layer)
    perturbed = hidden(tiny_weights, tiny_config, np.delete(tokens, 3), layer)  # gene 3 (position 3)
    mine = table[table.perturbed == names[tokens[3]]]
    assert table.perturbed.nunique() == 6 and not set(table.affected) & {names[cls_id], names[eos_id]}
    np.testing.assert_allclose(mine[mine.affected == "cell_emb"].value, [cos(perturbed[0], original[0])], rtol=1e-4)
    genes = np.delete(np.arange(1, 7), 2)
    np.testing.assert_allclose(
        mine[mine.affected != "cell_emb"].value, cos_rows(perturbed[1:-1], original[genes]), rtol=1e-4, atol=1e-5
    )
    # overexpressing a gene no cell holds: the full cell loses its last gene, <eos> stays last
    new = 24999
    table = run(tiny_model_dir, dataset, tmp_path / "b", perturb_type="overexpress", genes_to_perturb=[names[new]])
    tokens = np.asarray(cells[1])
    grown = np.concatenate([[cls_id, new], tokens[1:-2], [eos_id]])
    perturbed = hidden(tiny_weights, tiny_config, grown, layer)
    original = hidden(tiny_weights, tiny_config, tokens, layer)
    expected = cos_rows(perturbed[2:-1], original[1:-2]).mean()
    np.testing.assert_allclose(table[table.cell == 1].value, [expected], rtol=1e-4, atol=1e-5)


def test_gene_symbols_resolve_and_unknown_model_vocab_is_refused(tiny_config, cells, tmp_path):
    from mindformer_gf.model import build_model
    from mindformer_gf.tasks.perturb.perturber import GeneNames
    from mindformer_gf.train.checkpoint import save_model_dir

    names = GeneNames.shipped()
    assert names.token_of("cd14") == names.token_of("CD14") == names.token[names.name_to_id["CD14"]]
    v2 = tiny_config.replace(vocab_size=20275)
    model_dir = save_model_dir(build_model(v2, "BertForMaskedLM", seed=1), tmp_path / "v2_model")
    with pytest.raises(ValueError, match="tokenized with the V1 dictionary .* but the model's vocabulary is V2"):
        InSilicoPerturber(progress=False).perturb_data(model_dir, cells, tmp_path, "x")


def test_resume_continues_without_duplicates_and_the_cli(tiny_model_dir, cells, tmp_path, capsys):
    from mindformer_gf.cli import main

    dataset_dir = tmp_path / "cells.dataset"
    cells.save_to_disk(str(dataset_dir))
    argv = ["perturb", "--dataset", str(dataset_dir), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path)]
    argv += ["--prefix", "r", "--batch-size", "8", "--num-buckets", "1", "--shard-cells", "1", "--no-progress"]
    assert main([*argv, "--label", "cell_type", "--csv"]) == 0
    full = read_table(tmp_path / "r.parquet")
    assert len(list((tmp_path / "r.parquet").glob("part-*.parquet"))) == len(ROWS)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "r.csv"), full, check_dtype=False)
    with pytest.raises(SystemExit, match="r.parquet exists: pass resume=True"):
        main([*argv, "--label", "cell_type"])
    # an interrupted run: the last two shards never written
    for part in sorted((tmp_path / "r.parquet").glob("part-*.parquet"))[-2:]:
        part.unlink()
    with pytest.raises(PerturbationInputError, match="other settings"):
        run(tiny_model_dir, str(dataset_dir), tmp_path, "r", shard_cells=1, resume=True)
    resumed = run(tiny_model_dir, str(dataset_dir), tmp_path, "r", shard_cells=1, emb_label=["cell_type"], resume=True)
    key = ["cell", "perturbed", "affected"]
    assert not resumed.duplicated(key).any()
    # bit for bit: the cells left are redone in their window of the uninterrupted run, so in the same batches
    pd.testing.assert_frame_equal(
        resumed.sort_values(key).reset_index(drop=True), full.sort_values(key).reset_index(drop=True), check_exact=True
    )
    assert main(["perturb-stats", "--input", str(tmp_path / "r.parquet"), "--output-dir", str(tmp_path),
                 "--mode", "aggregate_gene_shifts", "--prefix", "s"]) == 0  # fmt: skip
    assert pd.read_csv(tmp_path / "s.csv").N_Detections.sum() == len(full)


def test_cell_selection_follows_the_reference_order(pbmc_dataset):
    from mindformer_gf.tasks.perturb.perturber import GeneNames

    dataset = short_dataset(pbmc_dataset, lengths=[4, 9, 6, 9, 7])
    perturber = InSilicoPerturber(max_ncells=4, cell_inds_to_perturb={"start": 1, "end": 3})
    rows = perturber.select_rows(dataset, GeneNames.shipped(), None, None)
    shuffled = np.random.default_rng(42).permutation(5)[:4]  # datasets' shuffle(seed=42), then the first 4
    lengths = np.asarray([4, 9, 6, 9, 7])[shuffled]
    expected = shuffled[np.argsort(-lengths, kind="stable")][1:3]  # longest first, ties in shuffled order
    assert rows.tolist() == expected.tolist()
    filtered = InSilicoPerturber(filter_data={"cell_type": [dataset["cell_type"][2]]})
    assert set(filtered.select_rows(dataset, GeneNames.shipped(), None, None)) == {
        i for i, t in enumerate(dataset["cell_type"]) if t == dataset["cell_type"][2]
    }


def test_a_cell_classifier_directory_perturbs_like_its_encoder(tiny_model_dir, cells, tmp_path):
    from mindformer_gf.pretrained import from_pretrained
    from mindformer_gf.train.checkpoint import save_model_dir

    with pytest.warns(UserWarning):
        classifier = from_pretrained(tiny_model_dir, "BertForSequenceClassification", num_labels=3)
    classifier_dir = save_model_dir(classifier, tmp_path / "classifier")
    one_cell = cells.select([2])
    mlm = run(tiny_model_dir, one_cell, tmp_path / "a")
    table = InSilicoPerturber(
        model_type="CellClassifier", num_classes=3, emb_mode="cell", progress=False, forward_batch_size=8
    )
    table = read_table(table.perturb_data(classifier_dir, one_cell, tmp_path / "b", "run"))
    np.testing.assert_allclose(table.value, mlm.value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("quantized", ["Pretrained-Quantized", "MTLCellClassifier-Quantized"])
def test_quantized_model_types_run_full_precision_with_a_one_line_warning(tiny_model_dir, cells, tmp_path, quantized):
    """The reference's 8-bit bitsandbytes inference is CUDA-only: the full-precision model gives the table, warned."""
    gene = ensembl_names()[int(cells[0]["input_ids"][2])]
    with pytest.warns(UserWarning) as caught:
        table = run(tiny_model_dir, cells, tmp_path / "q", model_type=quantized, genes_to_perturb=[gene])
    (warning,) = [w for w in caught if "CUDA-only" in str(w.message)]
    assert "\n" not in str(warning.message) and "full precision" in str(warning.message)
    # the unquantized type, perturbing the same gene: the same rows, bit for bit
    plain_type = quantized.removesuffix("-Quantized")
    plain = run(tiny_model_dir, cells, tmp_path / "p", model_type=plain_type, genes_to_perturb=[gene])
    assert len(table) > 0
    pd.testing.assert_frame_equal(table, plain)


def test_mtl_model_type_reads_the_encoder_of_a_saved_multitask_model(tiny_model_dir, cells, tmp_path):
    """model_type "MTLCellClassifier" on MTLClassifier's saved model directory (GeneformerMultiTask/: encoder,
    attention pooling, heads): the encoder's table, the same as that encoder's own model directory gives."""
    from mindformer_gf.finetune.task_model import MultitaskModel, load_encoder, save_task_model

    multitask = MultitaskModel(load_encoder(tiny_model_dir), [3, 2], "attention", seed=5)
    mtl_dir = save_task_model(
        multitask, tmp_path / "GeneformerMultiTask", {"kind": "multitask", "task_sizes": [3, 2], "pooling": "attention"}
    )
    gene = ensembl_names()[int(cells[1]["input_ids"][4])]
    isp = InSilicoPerturber(
        model_type="MTLCellClassifier",
        emb_mode="cell",
        genes_to_perturb=[gene],
        forward_batch_size=8,
        num_buckets=1,
        progress=False,
    )
    table = read_table(isp.perturb_data(mtl_dir, cells, tmp_path / "mtl", "run"))  # loads the directory itself
    expected = run(tiny_model_dir, cells, tmp_path / "pretrained", genes_to_perturb=[gene])
    assert len(table) > 0
    pd.testing.assert_frame_equal(table, expected, check_exact=False, rtol=1e-6)
