"""The reference's examples/in_silico_perturbation.ipynb, with only the import changed: EmbExtractor.get_state_embs,
InSilicoPerturber.perturb_data and InSilicoPerturberStats.get_stats (given the perturber's output directory, as the
notebook does) with the notebook's keywords, on the shipped PBMC cells and a tiny random 3-class cell classifier.
The state embeddings and perturbation shifts are checked against the numpy reference's forward pass; the statistics'
shifts against the table they summarise. Sizes are the test's: max_ncells 6 cells to perturb, 16 genes per cell."""

from __future__ import annotations

import numpy as np
import pandas as pd
from datasets import load_from_disk
from helpers.notebooks import (
    CELL_TYPES,
    encoder_weights,
    pbmc_disease_dataset,
    reference_cell_embedding,
    tiny_classifier_dir,
)

# the notebook: from geneformer import InSilicoPerturber, InSilicoPerturberStats, EmbExtractor
from mindformer_gf import EmbExtractor, InSilicoPerturber, InSilicoPerturberStats
from mindformer_gf.reference import forward as reference_forward
from mindformer_gf.safe_pickle import safe_load
from mindformer_gf.tasks.perturb import read_table
from mindformer_gf.tokenizer import load_gene_dictionaries

GENES_PER_CELL = 16
N_PERTURBED = 6


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_in_silico_perturbation_notebook(tmp_path):
    input_data = pbmc_disease_dataset(tmp_path, GENES_PER_CELL)
    model_dir = tiny_classifier_dir(tmp_path, GENES_PER_CELL)
    output_directory = tmp_path / "output_directory"
    isp_output_directory = tmp_path / "isp_output_directory"
    isp_stats_output_directory = tmp_path / "isp_stats_output_directory"

    cell_states_to_model = {"state_key": "disease", "start_state": "dcm", "goal_state": "nf", "alt_states": ["hcm"]}
    filter_data_dict = {"cell_type": CELL_TYPES}
    embex = EmbExtractor(
        model_type="CellClassifier",
        num_classes=3,
        filter_data=filter_data_dict,
        max_ncells=1000,
        emb_layer=0,
        summary_stat="exact_mean",
        forward_batch_size=256,
        model_version="V1",
        nproc=16,
    )
    state_embs_dict = embex.get_state_embs(
        cell_states_to_model, str(model_dir), str(input_data), str(output_directory), "output_prefix"
    )
    isp = InSilicoPerturber(
        perturb_type="delete",
        perturb_rank_shift=None,
        genes_to_perturb="all",
        combos=0,
        anchor_gene=None,
        model_type="CellClassifier",
        num_classes=3,
        emb_mode="cell",
        cell_emb_style="mean_pool",
        filter_data=filter_data_dict,
        cell_states_to_model=cell_states_to_model,
        state_embs_dict=state_embs_dict,
        max_ncells=N_PERTURBED,
        emb_layer=0,
        forward_batch_size=400,
        model_version="V1",
        nproc=16,
    )
    isp.perturb_data(str(model_dir), str(input_data), str(isp_output_directory), "output_prefix")
    ispstats = InSilicoPerturberStats(
        mode="goal_state_shift",
        genes_perturbed="all",
        combos=0,
        anchor_gene=None,
        cell_states_to_model=cell_states_to_model,
        model_version="V1",
    )
    ispstats.get_stats(str(isp_output_directory), None, str(isp_stats_output_directory), "output_prefix")

    # the state embeddings: exact means of the numpy reference's cell embeddings of each state's cells
    dataset = load_from_disk(str(input_data))
    weights, config = encoder_weights(model_dir)
    layer = config.num_hidden_layers  # emb_layer=0
    in_types = np.isin(dataset["cell_type"], CELL_TYPES)
    diseases = np.asarray(dataset["disease"])
    embedding = {}

    def cell_embedding(row: int) -> np.ndarray:
        if row not in embedding:
            embedding[row] = reference_cell_embedding(weights, config, dataset[row]["input_ids"], layer)
        return embedding[row]

    for state in ("dcm", "nf", "hcm"):
        rows = np.flatnonzero(in_types & (diseases == state))
        expected = np.mean([cell_embedding(int(r)) for r in rows], axis=0)
        np.testing.assert_allclose(np.asarray(state_embs_dict[state]), expected, rtol=1e-4, atol=1e-5)
    with open(output_directory / "output_prefix.pkl", "rb") as handle:
        saved = safe_load(handle)  # plain data: the allow-list unpickler reads it
    assert sorted(saved) == ["dcm", "hcm", "nf"]
    np.testing.assert_allclose(saved["nf"], np.asarray(state_embs_dict["nf"]), rtol=1e-12)

    # the table: per start-state cell and deleted gene, cos(perturbed, state) - cos(original, state)
    table = read_table(isp_output_directory / "output_prefix.parquet")
    cells = sorted(set(table.cell))
    assert len(cells) == N_PERTURBED and all(diseases[c] == "dcm" and in_types[c] for c in cells)
    ensembl = {v: k for k, v in load_gene_dictionaries("V1").token.items()}
    goal = np.asarray(state_embs_dict["nf"], np.float64)
    for cell in cells[:2]:
        tokens = np.asarray(dataset[int(cell)]["input_ids"])
        original = cell_embedding(int(cell))
        for position in (0, tokens.size - 1):
            kept = np.delete(tokens, position)[None].astype(np.int64)
            _, hidden = reference_forward(weights, kept, np.ones_like(kept), config, "BertModel")
            perturbed = hidden[layer][0].astype(np.float64).mean(axis=0)
            mine = table[
                (table.cell == cell) & (table.perturbed == ensembl[int(tokens[position])]) & (table.affected == "nf")
            ]
            np.testing.assert_allclose(mine.value, [cos(perturbed, goal) - cos(original, goal)], rtol=1e-3, atol=1e-5)

    # the statistics, found from the perturber's output_directory: each gene's shift is the mean of its values
    stats = pd.read_csv(isp_stats_output_directory / "output_prefix.csv")
    for column in ("Gene", "Gene_name", "Ensembl_ID", "Shift_to_goal_end", "Goal_end_FDR", "Shift_to_alt_end", "Sig"):
        assert column in stats.columns
    by_gene = table[table.affected == "nf"].groupby("perturbed").value
    expected_shift = by_gene.mean()
    np.testing.assert_allclose(
        stats.set_index("Ensembl_ID").loc[expected_shift.index, "Shift_to_goal_end"], expected_shift, rtol=1e-9
    )
    assert (stats.set_index("Ensembl_ID").loc[expected_shift.index, "N_Detections"] == by_gene.size()).all()
