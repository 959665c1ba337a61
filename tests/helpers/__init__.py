"""Helpers shared by the tests, one module per subject (imported as `helpers.<subject>`; tests/ is on the path):

- `helpers.oracles`: float64 oracles of the fused kernels (attention from `mindformer_gf.reference.attention`,
  LayerNorm with its backward) and the normwise relative error;
- `helpers.fused_ops`: graph-mode cells and runners around the fused attention operator;
- `helpers.convert`: Hugging Face models and checkpoint files for the converter tests;
- `helpers.tokenizer`: input files and the oracle of one cell's rank value encoding;
- `helpers.train`: a tiny model, step sources and a corpus for the training-loop tests;
- `helpers.tasks`: quick fine-tuning settings and small datasets for the task tests;
- `helpers.msrun`: running `gf` and worker scripts under msrun.
"""
