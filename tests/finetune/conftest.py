"""The fine-tuning tests use the task tests' tiny pretrained model and PBMC cells (tests/tasks/conftest.py)."""

from tasks.conftest import pbmc_dataset, pbmc_dataset_dir, tiny_config, tiny_model_dir, tiny_weights  # noqa: F401
