"""`InSilicoPerturberStats`: the reference's statistics over perturbation tables, with its output columns.

    stats = InSilicoPerturberStats(model_version="V1", mode="goal_state_shift", cell_states_to_model={...})
    result = stats.get_stats("out/pbmc_delete.parquet", None, "out", "pbmc_stats")   # out/pbmc_stats.csv + plot

Modes (per perturbed gene or group, "Gene" = its token id(s), "Gene_name" = symbol(s), "Ensembl_ID"):
- goal_state_shift: Shift_to_goal_end = mean shift toward the goal state over cells; Goal_end_vs_random_pval =
  scipy ranksums(every gene's goal-state shifts pooled, this gene's); Goal_end_FDR = Benjamini-Hochberg over genes
  (statsmodels); N_Detections; Sig = FDR < 0.05; sorted by Sig, shift, FDR. With alt states the same per alt state
  (Shift_to_alt_end / Alt_end_vs_random_pval / Alt_end_FDR for one, Shift_to_{state} / {state}_vs_random_pval /
  {state}_FDR for several).
- vs_null: Test_avg_shift, Null_avg_shift, Test_vs_null_avg_shift, Test_vs_null_pval (ranksums, NaN -> 1),
  Test_vs_null_FDR, N_Detections_test, N_Detections_null, Sig.
- mixture_model: a two-component scikit-learn GaussianMixture (random_state 0) over the per-gene mean shifts;
  Impact_component (1 = the component farther from "no effect": 1 for cosine similarities, 0 for state shifts; the
  reference assumes the mixture's component 0 is that one, which holds only when sklearn happens to order them so),
  Impact_component_percent (share of the gene's values in it), N_Detections. With combos (anchor_gene): Anchor_shift,
  Test_token_shift (from rows of single-gene perturbations in the inputs, NaN without), Sum_of_indiv_shifts,
  Combo_shift, Combo_minus_sum_shift (the reference crashes here).
- aggregate_data: every value of the chosen group(s): Cosine_sim, Gene, plus Ensembl_ID and Affected (works for
  groups of any size and for "all", where the reference crashes or refuses).
- aggregate_gene_shifts: per (perturbed, affected): Perturbed, Gene_name, Ensembl_ID, Affected,
  Affected_gene_name, Affected_Ensembl_ID, Cosine_sim_mean, Cosine_sim_stdev (ddof 0), N_Detections; "cell_emb"
  rows first, then by mean ascending.
Every mode writes `{prefix}.csv` and a plot `{prefix}_{mode}.png` / `.pdf` (ranked shifts with significance; a
volcano plot where there are p-values).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mindformer_gf.io import ensure_dir, matplotlib_pyplot, save_figure, write_csv
from mindformer_gf.tasks.perturb.output import PerturbationInputError, read_table
from mindformer_gf.tasks.perturb.perturber import GeneNames, possible_states

MODES = ("goal_state_shift", "vs_null", "mixture_model", "aggregate_data", "aggregate_gene_shifts")
RANDOM_SAMPLE_CAP = 100_000  # the reference downsamples the pooled values to this many (random.seed(42))


def get_fdr(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (statsmodels); NaN p-values stay NaN and do not count."""
    from statsmodels.stats.multitest import multipletests

    pvalues = np.asarray(pvalues, np.float64)
    fdr = np.full(pvalues.shape, np.nan)
    finite = np.isfinite(pvalues)
    if finite.any():
        fdr[finite] = multipletests(pvalues[finite], alpha=0.05, method="fdr_bh")[1]
    return fdr


def ranksums_pvalue(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import ranksums

    if len(x) == 0 or len(y) == 0:
        return float("nan")
    return float(ranksums(x, y).pvalue)


@dataclass
class StatsResult:
    table: Any  # pandas DataFrame
    csv: Path | None = None
    plots: list[Path] = field(default_factory=list)


class InSilicoPerturberStats:
    """The reference's InSilicoPerturberStats over this package's perturbation tables (see the module docstring)."""

    def __init__(
        self,
        mode: str = "mixture_model",
        genes_perturbed: str | Sequence[str] = "all",
        combos: int = 0,
        anchor_gene: str | None = None,
        cell_states_to_model: Mapping[str, Any] | None = None,
        pickle_suffix: str | None = "_raw.pickle",
        model_version: str = "V2",
        token_dictionary_file: str | None = None,
        gene_name_id_dictionary_file: str | None = None,
    ) -> None:
        """model_version picks the token dictionary behind the "Gene" column (token ids): "V1" the shipped one;
        "V2" (the reference's default) needs `token_dictionary_file` (token_dictionary_gc104M.pkl), as the V2
        dictionaries are not shipped. pickle_suffix: the reference's raw result files; this package's perturber
        writes `{prefix}.parquet` tables, which get_stats finds in the same directory (see get_stats)."""
        if mode not in MODES:
            raise PerturbationInputError(f"mode {mode!r} is not one of {MODES}")
        if mode == "goal_state_shift" and not cell_states_to_model:
            raise PerturbationInputError("goal_state_shift needs cell_states_to_model (state_key, start/goal state)")
        if combos not in (0, 1) or (combos == 1 and anchor_gene is None):
            raise PerturbationInputError("combos must be 0, or 1 with anchor_gene")
        self.mode = mode
        self.genes_perturbed = genes_perturbed if genes_perturbed == "all" else [str(g) for g in genes_perturbed]
        self.combos, self.anchor_gene = combos, anchor_gene
        self.cell_states_to_model = dict(cell_states_to_model) if cell_states_to_model else None
        if model_version not in ("V1", "V2"):
            raise PerturbationInputError(f"model_version must be 'V1' or 'V2', got {model_version!r}")
        if model_version == "V2" and token_dictionary_file is None:
            raise PerturbationInputError(
                "model_version 'V2' (the default) needs token_dictionary_file=.../token_dictionary_gc104M.pkl: the V2 "
                "dictionaries are not shipped with mindformer_gf; for V1 results pass model_version='V1'"
            )
        self.model_version = model_version
        self.pickle_suffix = pickle_suffix
        self.names = GeneNames.load(None, token_dictionary_file, gene_name_id_dictionary_file)

    # ---- inputs ----------------------------------------------------------------------------------------------------
    def _read(self, inputs: Any) -> Any:
        import pandas as pd

        if inputs is None:
            return None
        if isinstance(inputs, pd.DataFrame):
            return inputs
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        frames = [
            frame
            for item in inputs
            for frame in ([item] if isinstance(item, pd.DataFrame) else [read_table(p) for p in self.tables_in(item)])
        ]
        table = pd.concat(frames, ignore_index=True)
        missing = {"perturbed", "affected", "value"} - set(table.columns)
        if missing:
            raise PerturbationInputError(f"the input is not a gf perturb table: no column(s) {sorted(missing)}")
        return table

    def tables_in(self, path: str | os.PathLike, prefix: str | None = None) -> list[Path]:
        """The perturbation tables at `path`: the table itself (a `{prefix}.parquet` directory or its .csv), or,
        given the perturber's output_directory as the reference's scripts pass it, every table inside it (as the
        reference reads every result file of the directory), or only `{prefix}.parquet` when `prefix` is given."""
        path = Path(path)
        if not path.is_dir() or any(path.glob("part-*.parquet")):
            return [path]
        pattern = f"{prefix}.parquet" if prefix else "*.parquet"
        found = sorted(p for p in path.glob(pattern) if p.is_dir() and any(p.glob("part-*.parquet")))
        if found:
            return found
        if self.pickle_suffix and any(p.name.endswith(self.pickle_suffix) for p in path.iterdir()):
            raise PerturbationInputError(
                f"{path} holds the reference's *{self.pickle_suffix} files, which are not read here: run "
                "mindformer_gf's InSilicoPerturber (it writes {prefix}.parquet tables) and pass its output_directory"
            )
        raise PerturbationInputError(
            f"{path} holds no perturbation results (no {pattern} table with part-*.parquet): pass the perturber's "
            "output_directory or its {prefix}.parquet table"
        )

    def token_to_gene_name(self, item: Any) -> Any:
        """Gene symbol of a token id (a tuple of them for a tuple), NaN when unknown, as the reference's."""
        if isinstance(item, tuple):
            return tuple(self.token_to_gene_name(i) for i in item)
        if isinstance(item, (int, np.integer)):
            name = self.names.name_of(self.names.id_of(int(item)))
            return name if name is not None else float("nan")
        return float("nan")

    def _ensembl(self, gene: str) -> str:
        return self.names.id_of(self.names.token_of(gene))

    def _selected(self, table: Any) -> Any:
        if self.genes_perturbed == "all":
            return table
        wanted = "+".join(self._ensembl(g) for g in self.genes_perturbed)
        keep = table.perturbed == wanted
        if not keep.any():
            raise PerturbationInputError(f"no rows for the perturbation {wanted} in the input")
        return table[keep]

    def _affected(self) -> str:
        """The values the gene-level modes test: shifts toward the goal state with states, else cell_emb."""
        return str(self.cell_states_to_model["goal_state"]) if self.cell_states_to_model else "cell_emb"

    def _describe(self, perturbed: Sequence[str]) -> Any:
        """Gene (token ids), Gene_name (symbols) and Ensembl_ID of each perturbation key, "+"-joined for groups."""
        import pandas as pd

        genes, names = [], []
        for key in perturbed:
            ids = key.split("+")
            tokens = [self.names.token.get(i) for i in ids]
            genes.append(tokens[0] if len(ids) == 1 else "+".join(str(t) for t in tokens))
            names.append(
                "+".join(str(self.names.name_of(i)) for i in ids) if len(ids) > 1 else self.names.name_of(ids[0])
            )
        return pd.DataFrame({"Gene": genes, "Gene_name": names, "Ensembl_ID": list(perturbed)})

    # ---- the modes -------------------------------------------------------------------------------------------------
    def get_stats(
        self,
        input_data_directory: Any,
        null_dist_data_directory: Any,
        output_directory: str | os.PathLike | None,
        output_prefix: str,
        null_dict_list: Any = None,
        null_prefix: str | None = None,
    ) -> StatsResult:
        """Read the table(s), compute the mode's statistics, write `{output_prefix}.csv` and the plot when
        `output_directory` is given.

        input_data_directory / null_dist_data_directory: the perturber's output_directory (every table in it, as
        the reference reads every result file there), one `{prefix}.parquet` table (or its .csv), a list of them,
        or DataFrames. null_dict_list: the null run already loaded (a DataFrame or a list of them, e.g.
        `read_table(...)`), reused across several comparisons as the reference's list of loaded null dictionaries;
        it takes the place of null_dist_data_directory. null_prefix: only `{null_prefix}.parquet` of the null
        directory."""
        table = self._selected(self._read(input_data_directory))
        if self.mode == "goal_state_shift":
            frame = self.goal_state_shift(table)
        elif self.mode == "vs_null":
            if null_dict_list is not None:
                null = self._read(list(null_dict_list) if isinstance(null_dict_list, (list, tuple)) else null_dict_list)
            elif null_dist_data_directory is not None:
                paths = null_dist_data_directory
                if null_prefix and isinstance(paths, (str, os.PathLike)):
                    paths = self.tables_in(paths, null_prefix)
                null = self._read(paths)
            else:
                raise PerturbationInputError(
                    "vs_null needs the null run: null_dist_data_directory (--null) or null_dict_list"
                )
            frame = self.vs_null(table, self._selected(null))
        elif self.mode == "mixture_model":
            frame = self.mixture_model(table)
        elif self.mode == "aggregate_data":
            frame = self.aggregate_data(table)
        else:
            frame = self.aggregate_gene_shifts(table)
        result = StatsResult(frame.reset_index(drop=True))
        if output_directory is not None:
            out = ensure_dir(output_directory)
            result.csv = write_csv(out / f"{output_prefix}.csv", result.table)
            result.plots = plot_stats(result.table, self.mode, out / f"{output_prefix}_{self.mode}")
        return result

    def _values(self, table: Any, affected: str) -> dict[str, np.ndarray]:
        chosen = table[table.affected == affected]
        if chosen.empty:
            raise PerturbationInputError(
                f"the input has no values for {affected!r} (affected: {sorted(set(table.affected))[:5]}): check the "
                "cell states against the perturbation run"
            )
        return {k: v.to_numpy(np.float64) for k, v in chosen.groupby("perturbed", sort=True).value}

    def goal_state_shift(self, table: Any) -> Any:
        states = possible_states(self.cell_states_to_model)
        goal, alts = states[1], states[2:]
        per_state = {s: self._values(table, s) for s in [goal, *alts]}
        genes = sorted(per_state[goal])
        frame = self._describe(genes)

        def shifts_and_pvalues(values: dict[str, np.ndarray]) -> tuple[list[float], list[float]]:
            pooled = [v for g in genes for v in values.get(g, []) if not np.isnan(v)]
            if len(pooled) > RANDOM_SAMPLE_CAP:
                random.seed(42)
                pooled = random.sample(pooled, k=RANDOM_SAMPLE_CAP)
            means = [float(np.mean(values[g])) if g in values else np.nan for g in genes]
            return means, [ranksums_pvalue(pooled, values.get(g, [])) for g in genes]

        frame["Shift_to_goal_end"], frame["Goal_end_vs_random_pval"] = shifts_and_pvalues(per_state[goal])
        frame["Goal_end_FDR"] = get_fdr(frame["Goal_end_vs_random_pval"])
        for alt in alts:
            stem = ("Alt_end", "alt_end") if len(alts) == 1 else (alt, alt)
            means, pvalues = shifts_and_pvalues(per_state[alt])
            frame[f"Shift_to_{stem[1]}"] = means
            frame[f"{stem[0]}_vs_random_pval"] = pvalues
            frame[f"{stem[0]}_FDR"] = get_fdr(pvalues)
        frame["N_Detections"] = [len(per_state[goal][g]) for g in genes]
        frame["Sig"] = (frame["Goal_end_FDR"] < 0.05).astype(int)
        return frame.sort_values(["Sig", "Shift_to_goal_end", "Goal_end_FDR"], ascending=[False, False, True])

    def vs_null(self, table: Any, null: Any) -> Any:
        test, nulls = self._values(table, self._affected()), self._values(null, self._affected())
        genes = sorted(test)
        frame = self._describe(genes)
        empty = np.asarray([])
        frame["Test_avg_shift"] = [float(np.mean(test[g])) for g in genes]
        frame["Null_avg_shift"] = [float(np.mean(nulls[g])) if g in nulls else np.nan for g in genes]
        frame["Test_vs_null_avg_shift"] = frame["Test_avg_shift"] - frame["Null_avg_shift"]
        pvalues = np.asarray([ranksums_pvalue(test[g], nulls.get(g, empty)) for g in genes])
        frame["Test_vs_null_pval"] = np.where(np.isnan(pvalues), 1.0, pvalues)
        frame["Test_vs_null_FDR"] = get_fdr(frame["Test_vs_null_pval"])
        frame["N_Detections_test"] = [len(test[g]) for g in genes]
        frame["N_Detections_null"] = [len(nulls.get(g, empty)) for g in genes]
        frame["Sig"] = (frame["Test_vs_null_FDR"] < 0.05).astype(int)
        return frame.sort_values(["Sig", "Test_vs_null_avg_shift", "Test_vs_null_FDR"], ascending=[False, False, True])

    def mixture_model(self, table: Any) -> Any:
        from sklearn.mixture import GaussianMixture

        values = self._values(table, self._affected())
        no_effect = 0.0 if self.cell_states_to_model else 1.0
        if self.combos:
            anchor = self._ensembl(self.anchor_gene)
            combos = {k: v for k, v in values.items() if k.startswith(anchor + "+")}
            if not combos:
                raise PerturbationInputError(f"no combination with the anchor {anchor} in the input")
            genes = sorted(combos)
            frame = self._describe([k.split("+", 1)[1] for k in genes])
            single = {k: float(np.mean(v)) for k, v in values.items() if "+" not in k}
            frame["Anchor_shift"] = single.get(anchor, np.nan)
            frame["Test_token_shift"] = [single.get(k.split("+", 1)[1], np.nan) for k in genes]
            frame["Sum_of_indiv_shifts"] = frame["Anchor_shift"] + frame["Test_token_shift"]
            frame["Combo_shift"] = [float(np.mean(combos[k])) for k in genes]
            frame["Combo_minus_sum_shift"] = frame["Combo_shift"] - frame["Sum_of_indiv_shifts"]
            tested, mean_column, order = combos, "Combo_shift", "Combo_minus_sum_shift"
        else:
            genes = sorted(values)
            frame = self._describe(genes)
            frame["Test_avg_shift"] = [float(np.mean(values[g])) for g in genes]
            tested, mean_column, order = values, "Test_avg_shift", "Test_avg_shift"
        means = frame[mean_column].to_numpy(np.float64)
        if means.size < 2:
            raise PerturbationInputError("mixture_model needs at least two perturbed genes to fit two components")
        mixture = GaussianMixture(n_components=2, random_state=0).fit(means.reshape(-1, 1))
        centres = mixture.means_[:, 0]
        impact = int(np.argmax(np.abs(centres - no_effect)))

        def component(value: float) -> int:
            # beyond a centre on its own side: that component; in between: the mixture's prediction
            lo, hi = sorted(centres)
            impact_low = centres[impact] == lo
            if value < lo:
                return int(impact_low)
            if value > hi:
                return int(not impact_low)
            return int(mixture.predict([[value]])[0] == impact)

        frame["Impact_component"] = [component(m) for m in means]
        frame["Impact_component_percent"] = [100.0 * float(np.mean([component(v) for v in tested[g]])) for g in genes]
        frame["N_Detections"] = [len(tested[g]) for g in genes]
        ascending = bool(no_effect == 1.0)
        return frame.sort_values(["Impact_component", order], ascending=[False, ascending])

    def aggregate_data(self, table: Any) -> Any:
        import pandas as pd

        wanted = possible_states(self.cell_states_to_model) if self.cell_states_to_model else ["cell_emb"]
        chosen = table[table.affected.isin(wanted)]
        described = self._describe(sorted(set(chosen.perturbed))).set_index("Ensembl_ID")
        names = [described.loc[p, "Gene_name"] for p in chosen.perturbed]
        return pd.DataFrame(
            {
                "Cosine_sim": chosen.value.to_numpy(np.float64),
                "Gene": names,
                "Ensembl_ID": chosen.perturbed.to_numpy(),
                "Affected": chosen.affected.to_numpy(),
            }
        )

    def aggregate_gene_shifts(self, table: Any) -> Any:
        grouped = table.groupby(["perturbed", "affected"], sort=True).value
        summary = grouped.agg(["mean", lambda v: float(np.std(v, ddof=0)), "size"]).reset_index()
        summary.columns = ["perturbed", "affected", "mean", "std", "count"]
        frame = self._describe(list(summary.perturbed)).rename(columns={"Gene": "Perturbed"})
        frame["Affected"] = [self.names.token.get(a, a) for a in summary.affected]  # token id, or cell_emb / state
        frame["Affected_gene_name"] = [
            self.names.name_of(a) if a.startswith("ENS") else np.nan for a in summary.affected
        ]
        frame["Affected_Ensembl_ID"] = [a if a.startswith("ENS") else np.nan for a in summary.affected]
        frame["Cosine_sim_mean"] = summary["mean"].to_numpy()
        frame["Cosine_sim_stdev"] = summary["std"].to_numpy()
        frame["N_Detections"] = summary["count"].to_numpy()
        frame["_cell"] = summary.affected.to_numpy() == "cell_emb"
        return frame.sort_values(["_cell", "Cosine_sim_mean"], ascending=[False, True]).drop(columns="_cell")


# ---- plots ---------------------------------------------------------------------------------------------------------
def _label(row: Any) -> str:
    name = row.get("Gene_name")
    label = str(name) if isinstance(name, str) and name else str(row.get("Ensembl_ID"))
    cells = row.get("N_Detections")
    return f"{label} ({cells})" if cells is not None and cells == cells else label


def plot_stats(frame: Any, mode: str, stem: Path, top: int = 20) -> list[Path]:
    """One figure per mode (PNG and PDF): ranked shifts coloured by significance, and a volcano plot where there
    are p-values; a histogram for aggregate_data."""
    plt = matplotlib_pyplot()
    columns = {
        "goal_state_shift": ("Shift_to_goal_end", "Goal_end_FDR", "shift toward the goal state"),
        "vs_null": ("Test_vs_null_avg_shift", "Test_vs_null_FDR", "shift vs null"),
        "mixture_model": ("Test_avg_shift" if "Test_avg_shift" in frame else "Combo_shift", None, "mean shift"),
        "aggregate_gene_shifts": ("Cosine_sim_mean", None, "mean cosine similarity"),
    }
    if mode == "aggregate_data":
        figure, axis = plt.subplots(figsize=(6, 4))
        for (gene, affected), values in frame.groupby(["Gene", "Affected"]).Cosine_sim:
            axis.hist(values, bins=30, alpha=0.6, label=f"{gene} ({affected}, n={len(values)})")
        axis.set_xlabel("value per cell")
        axis.set_ylabel("cells")
        axis.legend(fontsize=7)
        return save_figure(figure, stem)
    value, fdr, title = columns[mode]
    with_volcano = fdr is not None
    figure, axes = plt.subplots(1, 2 if with_volcano else 1, figsize=(11 if with_volcano else 6, 5), squeeze=False)
    shown = frame.head(top)
    ranked = axes[0, 0]
    if "Sig" in shown:
        colours = ["tab:red" if s else "tab:grey" for s in shown["Sig"]]
    elif "Impact_component" in shown:
        colours = ["tab:red" if s else "tab:grey" for s in shown["Impact_component"]]
    else:
        colours = "tab:blue"
    labels = [_label(r) for _, r in shown.iterrows()]
    ranked.barh(range(len(shown))[::-1], shown[value].to_numpy(np.float64), color=colours)
    ranked.set_yticks(range(len(shown))[::-1], labels, fontsize=7)
    ranked.set_xlabel(value)
    ranked.set_title(f"top {len(shown)}: {title} (red: significant / impact; cells)", fontsize=10)
    if with_volcano:
        volcano = axes[0, 1]
        q = np.clip(frame[fdr].to_numpy(np.float64), 1e-300, 1)
        sig = frame["Sig"].to_numpy(bool)
        volcano.scatter(frame[value], -np.log10(q), c=np.where(sig, "tab:red", "tab:grey"), s=10)
        volcano.axhline(-np.log10(0.05), color="k", lw=0.8, ls="--")
        volcano.set_xlabel(value)
        volcano.set_ylabel(f"-log10 {fdr}")
        volcano.set_title("volcano")
    figure.tight_layout()
    return save_figure(figure, stem)
