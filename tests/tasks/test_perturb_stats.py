"""InSilicoPerturberStats on known tables against scipy (ranksums), Benjamini-Hochberg worked out in the test, and
scikit-learn's GaussianMixture; every mode writes its CSV and plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ranksums

from mindformer_gf.tasks.perturb import InSilicoPerturberStats, PerturbationInputError

SYMBOLS = ["CD14", "LYZ", "CD3E", "MS4A1", "NKG7", "GNLY"]


@pytest.fixture(scope="module")
def genes():
    from mindformer_gf.tasks.perturb.perturber import GeneNames

    names = GeneNames.shipped()
    return [names.name_to_id[s] for s in SYMBOLS]


def benjamini_hochberg(p):
    p = np.asarray(p, float)
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(q)
    out[order] = np.minimum(q, 1)
    return out


def long_table(values: dict, affected: str):
    """{perturbed: [value per cell]} -> a perturbation table (one row per cell)."""
    rows = [(cell, p, affected, v) for p, vs in values.items() for cell, v in enumerate(vs)]
    return pd.DataFrame(rows, columns=["cell", "perturbed", "affected", "value"])


STATES = {"state_key": "cell_type", "start_state": "A", "goal_state": "B", "alt_states": ["C"]}


def test_goal_state_shift_with_an_alt_state(genes, tmp_path):
    rng = np.random.default_rng(1)
    goal = {g: rng.normal(0.02 * i, 0.01, size=5 + i) for i, g in enumerate(genes)}
    alt = {g: rng.normal(-0.01 * i, 0.01, size=5 + i) for i, g in enumerate(genes)}
    table = pd.concat([long_table(goal, "B"), long_table(alt, "C"), long_table(alt, "A")])
    result = InSilicoPerturberStats(model_version="V1", mode="goal_state_shift", cell_states_to_model=STATES).get_stats(
        table, None, tmp_path, "goal"
    )
    frame = result.table.set_index("Ensembl_ID").loc[genes]
    pooled = np.concatenate([goal[g] for g in genes])
    pvalues = [ranksums(pooled, goal[g]).pvalue for g in genes]
    np.testing.assert_allclose(frame.Shift_to_goal_end, [goal[g].mean() for g in genes], rtol=1e-12)
    np.testing.assert_allclose(frame.Goal_end_vs_random_pval, pvalues, rtol=1e-12)
    np.testing.assert_allclose(frame.Goal_end_FDR, benjamini_hochberg(pvalues), rtol=1e-12)
    alt_p = [ranksums(np.concatenate([alt[g] for g in genes]), alt[g]).pvalue for g in genes]
    np.testing.assert_allclose(frame.Shift_to_alt_end, [alt[g].mean() for g in genes], rtol=1e-12)
    np.testing.assert_allclose(frame.Alt_end_FDR, benjamini_hochberg(alt_p), rtol=1e-12)
    assert list(frame.Gene_name) == SYMBOLS and list(frame.N_Detections) == [5, 6, 7, 8, 9, 10]
    assert list(frame.Sig) == list((benjamini_hochberg(pvalues) < 0.05).astype(int))
    ordered = result.table
    assert list(ordered.columns[:5]) == [
        "Gene",
        "Gene_name",
        "Ensembl_ID",
        "Shift_to_goal_end",
        "Goal_end_vs_random_pval",
    ]
    assert ordered.Sig.is_monotonic_decreasing
    assert (tmp_path / "goal.csv").is_file()
    assert {p.name for p in result.plots} == {"goal_goal_state_shift.png", "goal_goal_state_shift.pdf"}


def test_vs_null_against_ranksums(genes, tmp_path):
    rng = np.random.default_rng(2)
    test = {g: rng.normal(0.9 - 0.05 * i, 0.02, size=8) for i, g in enumerate(genes)}
    null = {g: rng.normal(0.9, 0.02, size=6) for g in genes[:-1]}  # the last gene has no null values: p = 1
    result = InSilicoPerturberStats(model_version="V1", mode="vs_null").get_stats(
        long_table(test, "cell_emb"), long_table(null, "cell_emb"), tmp_path, "null"
    )
    frame = result.table.set_index("Ensembl_ID").loc[genes]
    p = [ranksums(test[g], null[g]).pvalue for g in genes[:-1]] + [1.0]
    np.testing.assert_allclose(frame.Test_vs_null_pval, p, rtol=1e-12)
    np.testing.assert_allclose(frame.Test_vs_null_FDR, benjamini_hochberg(p), rtol=1e-12)
    shift = [test[g].mean() - null[g].mean() for g in genes[:-1]]
    np.testing.assert_allclose(frame.Test_vs_null_avg_shift[:-1], shift, rtol=1e-12)
    assert list(frame.N_Detections_null) == [6] * 5 + [0]


def test_mixture_model_matches_sklearn_and_handles_combos(genes, tmp_path):
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(3)
    means = [0.99, 0.98, 0.985, 0.6, 0.62, 0.97]  # genes 3 and 4 move the cell: the impact component
    values = {g: rng.normal(m, 0.005, size=6) for g, m in zip(genes, means, strict=True)}
    result = InSilicoPerturberStats(model_version="V1", mode="mixture_model").get_stats(
        long_table(values, "cell_emb"), None, tmp_path, "mm"
    )
    frame = result.table.set_index("Ensembl_ID").loc[genes]
    avg = np.asarray([values[g].mean() for g in genes])
    mixture = GaussianMixture(n_components=2, random_state=0).fit(avg.reshape(-1, 1))
    impact_label = int(np.argmin(mixture.means_[:, 0]))  # the component farther from 1 (no change)
    np.testing.assert_allclose(frame.Test_avg_shift, avg, rtol=1e-12)
    assert list(frame.Impact_component) == list((mixture.predict(avg.reshape(-1, 1)) == impact_label).astype(int))
    assert list(frame.Impact_component) == [0, 0, 0, 1, 1, 0]
    assert list(frame.Impact_component_percent) == [0, 0, 0, 100, 100, 0]

    anchor = genes[0]
    combo = {f"{anchor}+{g}": values[g] - 0.1 for g in genes[1:]}
    single = {anchor: values[anchor], **{g: values[g] for g in genes[1:]}}
    table = long_table({**combo, **single}, "cell_emb")
    combos = InSilicoPerturberStats(model_version="V1", mode="mixture_model", combos=1, anchor_gene="CD14").get_stats(
        table, None, None, "x"
    )
    frame = combos.table.set_index("Ensembl_ID").loc[genes[1:]]
    np.testing.assert_allclose(frame.Anchor_shift, values[anchor].mean(), rtol=1e-12)
    np.testing.assert_allclose(frame.Test_token_shift, [values[g].mean() for g in genes[1:]], rtol=1e-12)
    expected = [values[g].mean() - 0.1 - values[anchor].mean() - values[g].mean() for g in genes[1:]]
    np.testing.assert_allclose(frame.Combo_minus_sum_shift, expected, rtol=1e-9)


def test_aggregate_modes(genes, tmp_path):
    group = f"{genes[0]}+{genes[1]}"
    table = pd.DataFrame(
        {
            "cell": [0, 0, 0, 1, 1, 1],
            "perturbed": [group] * 6,
            "affected": ["cell_emb", genes[2], genes[3], "cell_emb", genes[2], genes[3]],
            "value": [0.9, 0.5, 0.7, 0.8, 0.6, 0.75],
        }
    )
    data = InSilicoPerturberStats(model_version="V1", mode="aggregate_data", genes_perturbed=["CD14", "LYZ"]).get_stats(
        table, None, tmp_path, "agg"
    )
    assert list(data.table.Cosine_sim) == [0.9, 0.8] and set(data.table.Gene) == {"CD14+LYZ"}
    shifts = InSilicoPerturberStats(model_version="V1", mode="aggregate_gene_shifts").get_stats(
        table, None, tmp_path, "shifts"
    )
    frame = shifts.table
    assert list(frame.Affected[:1]) == ["cell_emb"]  # cell_emb first, then by mean ascending
    assert list(frame.Affected_Ensembl_ID[1:]) == [genes[2], genes[3]]
    np.testing.assert_allclose(frame.Cosine_sim_mean, [0.85, 0.55, 0.725], rtol=1e-12)
    np.testing.assert_allclose(frame.Cosine_sim_stdev, [np.std([0.9, 0.8]), 0.05, 0.025], rtol=1e-12)
    assert list(frame.N_Detections) == [2, 2, 2] and list(frame.Affected_gene_name[1:]) == ["CD3E", "MS4A1"]
    assert all(p.is_file() for p in data.plots + shifts.plots)


def test_stats_bad_input(genes):
    with pytest.raises(PerturbationInputError, match="goal_state_shift needs cell_states_to_model"):
        InSilicoPerturberStats(model_version="V1", mode="goal_state_shift")
    with pytest.raises(PerturbationInputError, match="vs_null needs the null run"):
        InSilicoPerturberStats(model_version="V1", mode="vs_null").get_stats(
            long_table({genes[0]: [1.0]}, "cell_emb"), None, None, "x"
        )
    with pytest.raises(PerturbationInputError, match="no values for 'B'"):
        InSilicoPerturberStats(model_version="V1", mode="goal_state_shift", cell_states_to_model=STATES).get_stats(
            long_table({genes[0]: [1.0]}, "cell_emb"), None, None, "x"
        )
