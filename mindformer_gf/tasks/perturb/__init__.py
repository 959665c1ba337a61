"""In silico perturbation (the reference's InSilicoPerturber and InSilicoPerturberStats) and its statistics.

- `plan.py`: what a perturbation does to a cell's tokens (numpy);
- `engine.py`: the stopped encoder, originals once, perturbed copies batched across cells;
- `perturber.py`: `InSilicoPerturber`, `get_state_embs`;
- `output.py`: the long Parquet table, in shards, resumable;
- `stats.py`: `InSilicoPerturberStats` (goal_state_shift, vs_null, mixture_model, aggregate_data,
  aggregate_gene_shifts) and its plots.
"""

from mindformer_gf.tasks.perturb.output import PerturbationInputError, read_table
from mindformer_gf.tasks.perturb.perturber import InSilicoPerturber, get_state_embs
from mindformer_gf.tasks.perturb.stats import InSilicoPerturberStats

__all__ = ["InSilicoPerturber", "InSilicoPerturberStats", "PerturbationInputError", "get_state_embs", "read_table"]
