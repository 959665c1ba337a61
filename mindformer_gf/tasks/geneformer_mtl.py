"""The reference's `MTLClassifier` (geneformer/mtl_classifier.py and geneformer/mtl/), on our multitask classifier.

A Geneformer user's code runs with only the import changed:

    from mindformer_gf import MTLClassifier
    mc = MTLClassifier(task_columns=["cell_type", "disease_state"], study_name="mtl",
                       pretrained_path="model_dir", train_path="train.dataset", val_path="val.dataset",
                       test_path="test.dataset", model_save_path="models", results_dir="results",
                       tensorboard_log_dir="tblogs", hyperparameters=space, n_trials=15, epochs=1, batch_size=8)
    mc.run_optuna_study()               # or, with use_manual_hyperparameters=True: mc.run_manual_tuning()
    mc.load_and_evaluate_test_model()

Every constructor keyword of the reference is accepted with its default and meaning. The model is our
`MultitaskModel` (tasks/multitask.py: a shared encoder, position-0 or attention pooling, one linear head per task,
loss sum_t w_t cross-entropy_t), trained by the package's fine-tuning loop; only the reference's three-dataset
workflow and its files are here. Like the reference: label mappings from the training set (sorted values), the
validation set must have the same classes, training for `epochs` keeps the final weights, validation loss (the
weighted sum of the tasks' mean cross-entropies) is what Optuna minimises, Optuna task weights are normalised to
sum 1, `max_layers_to_freeze` {"min", "max"} is searched (default: 1 to layers - 1).

Files (the reference's names), written by rank 0:
- `results_dir/task_label_mappings.pkl`, `task_label_mappings_val.pkl`: {"task1": {label: index}, ...} (plain data);
- `results_dir/manual_run_val_preds.csv` (manual run) or `results_dir/trial_{n}/val_preds.csv` (each trial):
  Cell ID, `task{i}_true_idx`, `_pred_idx`, `_true_label`, `_pred_label`, `_all_probs`, `_prob_{label}`;
- `model_save_path/GeneformerMultiTask/`: the model (OUR format: a MindSpore model directory with `task.json`
  and `task_extras.safetensors`, loadable by `MultitaskClassifier.evaluate_saved_model`; the reference writes a
  torch state dict `pytorch_model.bin` with `bert.*`, `attention_pool.attention_weights`,
  `classification_heads.{i}.*`: convert such a checkpoint with the converter first) and `hyperparameters.json`;
- `results_dir/test_preds.csv`: Cell ID, `task{i} Prediction` (index in the label mapping), `task{i} Probabilities`.
Ours beside them: `val_metrics.json` per run (per task "f1" and "accuracy" as the reference prints them, our macro-F1
over all classes and the confusion matrix, and "val_loss"), the training loop's files under
`results_dir/manual_run/training/` or `results_dir/trial_{n}/training/`, `results_dir/optuna_trials.csv`, the
trial lines of the reference's `save_trial_callback` in `trials_result_path` (default `results_dir/results.txt`),
and `results_dir/test_metrics.json` when the test set carries the task columns.

Differences, by design: the saved model keeps the pooling it was trained with (the reference rebuilds the Optuna
winner without attention pooling and evaluates the test set with position-0 pooling whatever was trained);
the Optuna sampler is seeded with `seed` (the reference's is not); unknown hyperparameter names are refused.

Distributed training: our data parallelism comes from launching the script with msrun, e.g.
`msrun --worker_num=8 --local_worker_num=8 --master_addr=localhost --master_port=12355 script.py`: every rank
trains on its share of each batch and predicts a share of the cells; rank 0 writes the files. `master_addr` and
`master_port` are what to give msrun (a process msrun started uses msrun's, and says so when they differ);
`distributed_training=True` without msrun says how to launch and trains on one device, as the reference falls back
to one GPU. `run_optuna_study` runs on one process (search there, then train the best settings under msrun with
`run_manual_tuning`).
`use_wandb`, `tensorboard_log_dir`: the training loss per step and the validation loss and per-task F1/accuracy go
to Weights & Biases (`wandb`) and TensorBoard (`tensorboardX`, or torch's writer with `tensorboard`) when those are
installed; when not, one warning says so and the run goes on (the loop's `metrics.csv` has the same numbers).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mindformer_gf.finetune.fit import FineTuneSettings

logger = logging.getLogger("mindformer_gf.tasks")

MODEL_DIR_NAME = "GeneformerMultiTask"
HYPERPARAMETERS_FILE = "hyperparameters.json"
TRAIN_MAPPINGS_FILE = "task_label_mappings.pkl"
VAL_MAPPINGS_FILE = "task_label_mappings_val.pkl"
TEST_PREDICTIONS_FILE = "test_preds.csv"

# the reference's defaults when `hyperparameters` / `manual_hyperparameters` are None
REFERENCE_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "warmup_ratio": {"type": "float", "low": 0.005, "high": 0.01},
    "weight_decay": {"type": "float", "low": 0.01, "high": 0.1},
    "dropout_rate": {"type": "float", "low": 0.0, "high": 0.7},
    "lr_scheduler_type": {"type": "categorical", "choices": ["cosine"]},
    "task_weights": {"type": "float", "low": 0.1, "high": 2.0},
}
REFERENCE_MANUAL_HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 0.001,
    "warmup_ratio": 0.01,
    "weight_decay": 0.1,
    "dropout_rate": 0.1,
    "lr_scheduler_type": "cosine",
    "use_attention_pooling": False,
    "task_weights": [1, 1],
    "max_layers_to_freeze": 2,
}
# the reference model's dropout on the pooled output when no trial or manual value sets it
DEFAULT_DROPOUT_RATE = 0.1
# what a search space may draw, and what manual hyperparameters may set (the reference copies any key into its
# config, where all but these are ignored or break a later step: we refuse the others by name)
SEARCHABLE = ("learning_rate", "warmup_ratio", "weight_decay", "dropout_rate", "lr_scheduler_type", "task_weights")
MANUAL_KEYS = SEARCHABLE + (
    "use_attention_pooling",
    "max_layers_to_freeze",
    "use_task_weights",
    "epochs",
    "batch_size",
    "gradient_clipping",
    "max_grad_norm",
    "gradient_accumulation_steps",
    "seed",
)


class MTLClassifier:
    """The reference's multi-task cell classifier (see the module docstring for files, msrun and differences).

    Keywords are the reference's, with its defaults: task_columns (dataset columns, one classification task each;
    tasks are named "task1", "task2", ... in the files), train_path / val_path / test_path (tokenized datasets;
    a "unique_cell_id" column names the cells in the prediction files), pretrained_path, model_save_path,
    results_dir, trials_result_path, batch_size, n_trials, study_name, max_layers_to_freeze ({"min", "max"} range
    searched by Optuna; None: 1 to the model's layers - 1), epochs, tensorboard_log_dir, distributed_training,
    master_addr, master_port, use_attention_pooling, use_task_weights, hyperparameters (Optuna search space:
    {name: {"type": "float"|"int"|"categorical", "low", "high", "log", "choices"}}), manual_hyperparameters,
    use_manual_hyperparameters, use_wandb, wandb_project, gradient_clipping, max_grad_norm,
    gradient_accumulation_steps, seed.

    Ours: `settings` (FineTuneSettings) for what the reference has no keyword for (device, precision,
    num_buckets, forward_batch_size, progress_bar); the reference's keywords override its training fields.
    """

    valid_option_dict: dict[str, set[Any]] = {
        "task_columns": {list},
        "train_path": {None, str},
        "val_path": {None, str},
        "test_path": {None, str},
        "pretrained_path": {None, str},
        "model_save_path": {None, str},
        "results_dir": {None, str},
        "batch_size": {None, int},
        "n_trials": {None, int},
        "study_name": {None, str},
        "max_layers_to_freeze": {None, dict},
        "epochs": {None, int},
        "tensorboard_log_dir": {None, str},
        "distributed_training": {None, bool},
        "master_addr": {None, str},
        "master_port": {None, str},
        "use_attention_pooling": {None, bool},
        "use_task_weights": {None, bool},
        "hyperparameters": {None, dict},
        "manual_hyperparameters": {None, dict},
        "use_manual_hyperparameters": {None, bool},
        "use_wandb": {None, bool},
        "wandb_project": {None, str},
        "gradient_clipping": {None, bool},
        "max_grad_norm": {None, int, float},
        "seed": {None, int},
        "trials_result_path": {None, str},
        "gradient_accumulation_steps": {None, int},
    }

    def __init__(
        self,
        task_columns: list[str] | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        pretrained_path: str | None = None,
        model_save_path: str | None = None,
        results_dir: str | None = None,
        trials_result_path: str | None = None,
        batch_size: int = 4,
        n_trials: int = 15,
        study_name: str = "mtl",
        max_layers_to_freeze: dict[str, int] | None = None,
        epochs: int = 1,
        tensorboard_log_dir: str = "/results/tblogdir",
        distributed_training: bool = False,
        master_addr: str = "localhost",
        master_port: str = "12355",
        use_attention_pooling: bool = True,
        use_task_weights: bool = True,
        hyperparameters: dict[str, dict[str, Any]] | None = None,
        manual_hyperparameters: dict[str, Any] | None = None,
        use_manual_hyperparameters: bool = False,
        use_wandb: bool = False,
        wandb_project: str | None = None,
        gradient_clipping: bool = False,
        max_grad_norm: float | None = None,
        gradient_accumulation_steps: int = 1,
        seed: int = 42,
        settings: FineTuneSettings | None = None,
    ) -> None:
        self.task_columns = task_columns
        self.train_path = _path_text(train_path)
        self.val_path = _path_text(val_path)
        self.test_path = _path_text(test_path)
        self.pretrained_path = _path_text(pretrained_path)
        self.model_save_path = _path_text(model_save_path)
        self.results_dir = _path_text(results_dir)
        self.trials_result_path = _path_text(trials_result_path)
        self.batch_size = batch_size
        self.n_trials = n_trials
        self.study_name = study_name
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.epochs = epochs
        self.tensorboard_log_dir = _path_text(tensorboard_log_dir)
        self.distributed_training = distributed_training
        self.master_addr = master_addr
        self.master_port = master_port
        self.use_attention_pooling = use_attention_pooling
        self.use_task_weights = use_task_weights
        self.hyperparameters = dict(hyperparameters) if hyperparameters is not None else dict(REFERENCE_SEARCH_SPACE)
        self.manual_hyperparameters = (
            dict(manual_hyperparameters)
            if manual_hyperparameters is not None
            else dict(REFERENCE_MANUAL_HYPERPARAMETERS)
        )
        self.use_manual_hyperparameters = use_manual_hyperparameters
        self.use_wandb = use_wandb
        self.wandb_project = wandb_project
        self.gradient_clipping = gradient_clipping
        self.max_grad_norm = max_grad_norm
        self.seed = seed
        self.max_layers_to_freeze = max_layers_to_freeze  # checked by type first, then filled in below
        if settings is None:
            # imported here: the class is importable (e.g. to read its signature) without loading MindSpore
            from mindformer_gf.finetune.fit import FineTuneSettings

            settings = FineTuneSettings()
        self.settings = settings
        self.validate_options()
        self._check_values()
        if max_layers_to_freeze is None:
            # the reference's range: 1 to the pretrained model's layers - 1 ({"min": 1, "max": 0} without a model)
            layers = _layer_count(self.pretrained_path) if self.pretrained_path is not None else 1
            self.max_layers_to_freeze = {"min": 1, "max": layers - 1}
        if self.use_manual_hyperparameters:
            logger.warning("Hyperparameter tuning is highly recommended for optimal results.")
        # the reference's attribute (it never writes the file; we write the trial lines there by default)
        self.trials_results_path = (
            os.path.join(self.results_dir, "results.txt") if self.results_dir is not None else None
        )
        # the reference makes the output directories here
        for output_dir in (self.model_save_path, self.results_dir):
            if output_dir is not None:
                os.makedirs(output_dir, exist_ok=True)
        self.config = {k: v for k, v in self.__dict__.items() if k in self.valid_option_dict}
        self._said_missing: set[str] = set()

    # ---- the reference's checks ----------------------------------------------------------------------------------
    def validate_options(self) -> None:
        """Each option of the reference's `valid_option_dict` has one of its allowed types or values."""
        for name, valid in self.valid_option_dict.items():
            value = getattr(self, name)
            if not isinstance(value, (list, dict)) and any(
                value is option for option in valid if not isinstance(option, type)
            ):
                continue
            types = tuple(option for option in valid if isinstance(option, type))
            # bool is an int in Python: an int option takes no True/False
            if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
                continue
            allowed = ", ".join(sorted("None" if o is None else o.__name__ for o in valid))
            raise ValueError(f"invalid {name}={value!r}: {name} must be one of {allowed}")

    def _check_values(self) -> None:
        columns = self.task_columns
        if columns is not None and (not columns or len(set(columns)) != len(columns)):
            raise ValueError(f"task_columns must name one or more distinct dataset columns, got {columns}")
        for name in ("batch_size", "epochs", "n_trials", "gradient_accumulation_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gradient_clipping and self.max_grad_norm is None:
            raise ValueError("gradient_clipping=True needs max_grad_norm (e.g. max_grad_norm=1.0)")
        if isinstance(self.max_layers_to_freeze, dict) and set(self.max_layers_to_freeze) != {"min", "max"}:
            raise ValueError(
                f'max_layers_to_freeze must be {{"min": int, "max": int}}, got {self.max_layers_to_freeze}'
            )
        unknown = sorted(set(self.hyperparameters) - set(SEARCHABLE) - {"use_attention_pooling"})
        if unknown:
            raise ValueError(f"hyperparameters {unknown} are not searched by MTLClassifier; known: {list(SEARCHABLE)}")
        for name, spec in self.hyperparameters.items():
            _spec(name, spec)
        from mindformer_gf.train.schedule import SCHEDULES

        schedules = list(self.hyperparameters.get("lr_scheduler_type", {}).get("choices", []))
        schedules.append(self.manual_hyperparameters.get("lr_scheduler_type", "cosine"))
        unknown = sorted({str(s) for s in schedules} - set(SCHEDULES))
        if unknown:
            raise ValueError(f"lr_scheduler_type {unknown} is not one of {SCHEDULES}")
        unknown = sorted(set(self.manual_hyperparameters) - set(MANUAL_KEYS))
        if unknown:
            raise ValueError(f"manual_hyperparameters {unknown} are not MTLClassifier settings; known: {MANUAL_KEYS}")

    def validate_additional_options(self, req_var_dict: Mapping[str, Any]) -> None:
        """The reference's check of a method's required variables: none of them None."""
        missing = [name for name, value in req_var_dict.items() if value is None]
        if missing:
            raise ValueError(f"MTLClassifier needs {', '.join(missing)}: pass them to the constructor")

    def _require(self, *names: str) -> None:
        self.validate_additional_options({name: getattr(self, name) for name in names})

    # ---- the reference's methods ---------------------------------------------------------------------------------
    def run_manual_tuning(self) -> float | None:
        """Fine-tune with `manual_hyperparameters` (needs use_manual_hyperparameters=True); saves the model and
        `hyperparameters.json` under model_save_path/GeneformerMultiTask. Returns the validation loss (None on the
        ranks other than 0 of an msrun launch)."""
        self._require("task_columns", "train_path", "val_path", "pretrained_path", "model_save_path", "results_dir")
        if not self.use_manual_hyperparameters:
            raise ValueError("Manual hyperparameters are not enabled. Set use_manual_hyperparameters to True.")
        self.config["manual_hyperparameters"] = self.manual_hyperparameters
        self.config["use_manual_hyperparameters"] = True
        self._check_launch()
        # every setting checked before anything is written
        values = self._manual_values(len(self.task_columns))
        self._settings(values)
        layers = _layer_count(self.pretrained_path)
        if not 0 <= values["max_layers_to_freeze"] <= layers:
            raise ValueError(
                f"manual_hyperparameters max_layers_to_freeze={values['max_layers_to_freeze']} but the model has "
                f"{layers} layers: give 0 to {layers}"
            )
        if _msrun_scheduler():
            _serve_as_scheduler()
            return None
        data = self._training_data()
        print("\nManual hyperparameters being used:")
        for key, value in self.manual_hyperparameters.items():
            print(f"{key}: {value}")
        run = self._train_and_validate(data, values, "manual_run", Path(self.results_dir) / "manual_run")
        if run.val_loss is None:
            _wait_for_rank_0()  # the method returns once the model is saved, on every rank
            return None
        print(f"\nValidation loss with manual hyperparameters: {run.val_loss}")
        saved = {
            **self.manual_hyperparameters,
            "dropout_rate": values["dropout_rate"],
            "use_task_weights": self.use_task_weights,
            "task_weights": values["task_weights"],
            "max_layers_to_freeze": values["max_layers_to_freeze"],
            "use_attention_pooling": values["use_attention_pooling"],
        }
        self._save_model(run.model, data, values, saved)
        _wait_for_rank_0()
        return run.val_loss

    def run_optuna_study(self) -> float | None:
        """Optuna search over `hyperparameters` (and the layers to freeze), `n_trials` trials minimising validation
        loss; saves the best trial's model and hyperparameters. With use_manual_hyperparameters=True, the manual run
        instead (as the reference). Returns the best validation loss."""
        self._require("task_columns", "train_path", "val_path", "pretrained_path", "model_save_path", "results_dir")
        if self.use_manual_hyperparameters:
            return self.run_manual_tuning()
        from mindformer_gf.train.distributed import launched_by_msrun

        if launched_by_msrun() and int(os.environ.get("MS_WORKER_NUM", "1")) > 1:
            raise ValueError(
                "run_optuna_study runs on one process: search without msrun, then train the best settings under "
                "msrun with use_manual_hyperparameters=True and run_manual_tuning()"
            )
        import optuna

        from mindformer_gf.finetune.search import trials_frame
        from mindformer_gf.io import write_csv

        freeze = self._freeze_range()
        data = self._training_data()
        n_tasks = len(data.tasks)
        best: dict[str, Any] = {}

        def objective(trial: Any) -> float:
            values = self._trial_values(trial, n_tasks, freeze)
            run_name = f"trial_{trial.number}"
            run = self._train_and_validate(data, values, run_name, Path(self.results_dir) / run_name, trial.number)
            trial.set_user_attr("task_weights", values["task_weights"])
            trial.report(run.val_loss, self.epochs)
            if trial.should_prune():
                raise optuna.TrialPruned()
            if not best or run.val_loss < best["val_loss"]:
                best.update(val_loss=run.val_loss, model=run.model, values=values, number=trial.number)
            return run.val_loss

        lines_path = Path(self.trials_result_path or self.trials_results_path)
        if lines_path.is_dir():
            lines_path = lines_path / "results.txt"

        def write_trial_line(study: Any, trial: Any) -> None:
            # the reference's save_trial_callback line; the value is the validation loss Optuna minimised
            lines_path.parent.mkdir(parents=True, exist_ok=True)
            with open(lines_path, "a", encoding="utf-8") as handle:
                handle.write(f"Trial {trial.number}: Value (validation loss): {trial.value}, Params: {trial.params}\n")

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            direction="minimize",
            study_name=self.study_name,
            sampler=optuna.samplers.TPESampler(seed=self.seed),
            load_if_exists=True,
        )
        study.optimize(objective, n_trials=self.n_trials, callbacks=[write_trial_line])
        write_csv(Path(self.results_dir) / "optuna_trials.csv", trials_frame(study))
        if not best:
            raise ValueError(
                f"all {self.n_trials} trials were pruned or failed (see {self.results_dir}/optuna_trials.csv): "
                "run more trials"
            )
        print("Saving the best model and its hyperparameters...")
        params = dict(study.trials[best["number"]].params)
        values = best["values"]
        saved = {
            **params,
            "task_weights": values["task_weights"],
            "dropout_rate": values["dropout_rate"],
            "max_layers_to_freeze": values["max_layers_to_freeze"],
            "use_attention_pooling": values["use_attention_pooling"],
            "use_task_weights": self.use_task_weights,
            "trial": best["number"],
        }
        self._save_model(best["model"], data, values, saved)
        return float(best["val_loss"])

    def load_and_evaluate_test_model(self) -> Any:
        """Predict the test cells with the saved model (model_save_path/GeneformerMultiTask): writes
        results_dir/test_preds.csv (and test_metrics.json when the test set has the task columns). Returns the
        predictions (a pandas DataFrame; None on the ranks other than 0 of an msrun launch)."""
        self._require("test_path", "model_save_path", "results_dir")
        if _msrun_scheduler():
            return None  # msrun's scheduler process has no share of the cells (the workers join no group here)
        import pandas as pd

        from mindformer_gf.finetune.metrics import softmax
        from mindformer_gf.finetune.runs import bucket_widths, sharded_forward
        from mindformer_gf.finetune.task_model import load_task_model, read_task
        from mindformer_gf.io import write_csv, write_json
        from mindformer_gf.train.device import prepare_device

        model_dir = Path(self.model_save_path) / MODEL_DIR_NAME
        task = read_task(model_dir)
        if task is None:
            if (model_dir / "pytorch_model.bin").is_file():
                raise ValueError(
                    f"{model_dir} holds the reference's torch state dict (pytorch_model.bin): convert it to a "
                    "mindformer_gf model directory with the converter first"
                )
            raise FileNotFoundError(f"{model_dir} has no trained model: run run_optuna_study or run_manual_tuning")
        if task.get("kind") != "multitask":
            raise ValueError(f"{model_dir} is not a multitask model (task.json kind {task.get('kind')!r})")
        if self.task_columns is not None and list(self.task_columns) != list(task["tasks"]):
            raise ValueError(f"task_columns {self.task_columns} are not the saved model's tasks {task['tasks']}")
        settings = self._settings({})
        prepare_device(settings.device)
        model = load_task_model(model_dir)
        dataset, pad_id = _open_dataset(self.test_path, model.config, "test_path")
        mappings = self._read_mappings(task)
        names = list(mappings)
        rows = np.arange(dataset.num_rows)
        buckets = bucket_widths(_lengths(dataset), settings, model.config.max_position_embeddings)
        record = {"command": "MTLClassifier.load_and_evaluate_test_model", "model": str(model_dir)}
        outputs, job = sharded_forward(
            model, dataset, rows, settings, buckets, Path(self.results_dir), "test_preds", record, pad_id, "test"
        )
        if outputs is None:
            return None
        probabilities = [softmax(np.asarray(o, np.float64)) for o in outputs]
        frame = pd.DataFrame({"Cell ID": _cell_ids(dataset)})
        for name, probs in zip(names, probabilities, strict=True):
            frame[f"{name} Prediction"] = probs.argmax(1)
            frame[f"{name} Probabilities"] = [",".join(map(str, p)) for p in probs]
        files = [write_csv(Path(self.results_dir) / TEST_PREDICTIONS_FILE, frame)]
        print(f"Test predictions saved to {files[0]}")
        metrics = self._test_metrics(dataset, task["tasks"], mappings, probabilities)
        if metrics:
            files.append(write_json(Path(self.results_dir) / "test_metrics.json", metrics))
        job.finish(files)
        print("Evaluation completed.")
        return frame

    def save_model_without_heads(self) -> Path:
        """The fine-tuned encoder alone (no pooling, no heads), as a model directory any of our tasks loads:
        model_save_path/GeneformerMultiTask/model_without_heads (the reference's commented-out method)."""
        self._require("model_save_path")
        from mindformer_gf.finetune.task_model import encoder_of, load_task_model
        from mindformer_gf.train.checkpoint import save_model_dir
        from mindformer_gf.train.distributed import launched_context

        model_dir = Path(self.model_save_path) / MODEL_DIR_NAME
        context = launched_context()
        if context is None or not context.is_main:
            return model_dir / "model_without_heads"  # under msrun, rank 0 writes it
        if not (model_dir / "task.json").is_file():
            raise FileNotFoundError(f"{model_dir} has no trained model: run run_optuna_study or run_manual_tuning")
        path = save_model_dir(encoder_of(load_task_model(model_dir)), model_dir / "model_without_heads")
        print(f"Model without classification heads saved to {path}")
        return path

    # ---- data ----------------------------------------------------------------------------------------------------
    def _training_data(self) -> _TrainingData:
        """Training and validation sets with integer labels from the training set's label mapping (sorted values,
        as the reference); the validation set must have the same classes. Writes the two mapping pickles."""
        from mindformer_gf.infer.datasets import model_config_of
        from mindformer_gf.train.distributed import launched_context

        config = model_config_of(self.pretrained_path)
        train, pad_id = _open_dataset(self.train_path, config, "train_path")
        val, _ = _open_dataset(self.val_path, config, "val_path")
        tasks = [f"task{i + 1}" for i in range(len(self.task_columns))]
        train_maps = _label_mappings(train, tasks, self.task_columns, "training")
        val_maps = _label_mappings(val, tasks, self.task_columns, "validation")
        for task, column in zip(tasks, self.task_columns, strict=True):
            if train_maps[task] != val_maps[task]:
                raise ValueError(
                    f"task {task} ({column}): the validation classes {sorted(val_maps[task], key=str)} are not the "
                    f"training classes {sorted(train_maps[task], key=str)}: both sets need the same classes"
                )
            if len(train_maps[task]) < 2:
                raise ValueError(f"task {task} ({column}) has {len(train_maps[task])} class(es); a task needs two")
        context = launched_context()
        if context is None or context.is_main:
            out = Path(self.results_dir)
            _write_pickle(out / TRAIN_MAPPINGS_FILE, train_maps)
            _write_pickle(out / VAL_MAPPINGS_FILE, val_maps)
        train_labels = [_encode(train, c, train_maps[t]) for t, c in zip(tasks, self.task_columns, strict=True)]
        val_labels = [_encode(val, c, train_maps[t]) for t, c in zip(tasks, self.task_columns, strict=True)]
        return _TrainingData(tasks, train, val, pad_id, train_maps, train_labels, val_labels, config.num_hidden_layers)

    def _read_mappings(self, task: dict[str, Any]) -> dict[str, dict[Any, int]]:
        """The training label mapping (results_dir/task_label_mappings.pkl, through the allow-list unpickler);
        without it, the saved model's classes."""
        from mindformer_gf.safe_pickle import safe_load

        path = Path(self.results_dir) / TRAIN_MAPPINGS_FILE
        names = [f"task{i + 1}" for i in range(len(task["tasks"]))]
        if path.is_file():
            mappings = safe_load(str(path))
            if list(mappings) == names and all(
                len(mappings[n]) == size for n, size in zip(names, task["task_sizes"], strict=True)
            ):
                return mappings
            logger.warning("%s does not match the saved model's tasks: using the model's classes", path)
        return {n: {v: int(k) for k, v in m.items()} for n, m in zip(names, task["id2labels"], strict=True)}

    def _test_metrics(
        self,
        dataset: Any,
        columns: Sequence[str],
        mappings: dict[str, dict[Any, int]],
        probabilities: list[np.ndarray],
    ) -> dict[str, Any]:
        """Per task, when the test set has its column and every value is a known class: the metrics of the
        predictions (reference-style "f1", "accuracy", and ours)."""
        metrics: dict[str, Any] = {}
        for (name, mapping), column, probs in zip(mappings.items(), columns, probabilities, strict=True):
            if column not in dataset.column_names:
                continue
            values = dataset[column]
            if any(v not in mapping for v in values):
                logger.warning("test column %r has classes the model was not trained on: no metrics for it", column)
                continue
            labels = np.asarray([mapping[v] for v in values])
            metrics[name] = {"column": column, **_task_metrics(labels, probs, mapping)}
        return metrics

    # ---- settings of a run ---------------------------------------------------------------------------------------
    def _freeze_range(self) -> tuple[int, int]:
        low, high = int(self.max_layers_to_freeze["min"]), int(self.max_layers_to_freeze["max"])
        layers = _layer_count(self.pretrained_path)
        if not 0 <= low <= high <= layers:
            raise ValueError(
                f"max_layers_to_freeze {self.max_layers_to_freeze} is not a range within the model's {layers} layers: "
                f'pass max_layers_to_freeze={{"min": 0, "max": {max(0, layers - 1)}}}'
            )
        return low, high

    def _manual_values(self, n_tasks: int) -> dict[str, Any]:
        """What a manual run trains with: the constructor's options overridden by `manual_hyperparameters`."""
        values = {
            "dropout_rate": DEFAULT_DROPOUT_RATE,
            "use_attention_pooling": self.use_attention_pooling,
            "max_layers_to_freeze": self.max_layers_to_freeze,
            "task_weights": None,
            **self.manual_hyperparameters,
        }
        missing = [k for k in ("learning_rate", "warmup_ratio", "weight_decay", "lr_scheduler_type") if k not in values]
        if missing:
            raise ValueError(f"manual_hyperparameters needs {missing} (see MTLClassifier's default manual values)")
        if not isinstance(values["max_layers_to_freeze"], int) or isinstance(values["max_layers_to_freeze"], bool):
            raise ValueError("manual_hyperparameters needs max_layers_to_freeze as a number of layers (e.g. 2)")
        values["task_weights"] = self._task_weights(values["task_weights"], n_tasks, "manual_hyperparameters")
        return values

    def _trial_values(self, trial: Any, n_tasks: int, freeze: tuple[int, int]) -> dict[str, Any]:
        """A trial's values drawn from `hyperparameters` (task weights normalised to sum 1, as the reference) and
        the layers to freeze from `max_layers_to_freeze`."""
        from mindformer_gf.finetune.search import suggest

        space = {name: _spec(name, spec) for name, spec in self.hyperparameters.items()}
        weights_spec = space.pop("task_weights", None)
        values: dict[str, Any] = {
            "dropout_rate": DEFAULT_DROPOUT_RATE,
            "use_attention_pooling": self.use_attention_pooling,
            **suggest(trial, space),
        }
        weights = None
        if weights_spec is not None and self.use_task_weights:
            drawn = suggest(trial, {"task_weights": weights_spec}, n_tasks)["task_weights"]
            weights = [w / sum(drawn) for w in drawn]
        values["task_weights"] = self._task_weights(weights, n_tasks, "hyperparameters")
        values["max_layers_to_freeze"] = int(trial.suggest_int("max_layers_to_freeze", *freeze))
        for key, default in (("learning_rate", 1e-3), ("warmup_ratio", 0.01), ("weight_decay", 0.1)):
            values.setdefault(key, default)
        values.setdefault("lr_scheduler_type", "cosine")
        return values

    def _task_weights(self, weights: Sequence[float] | None, n_tasks: int, where: str) -> list[float]:
        if not self.use_task_weights or weights is None:
            return [1.0] * n_tasks
        if len(weights) != n_tasks:
            raise ValueError(
                f"{where} gives {len(weights)} task_weights for {n_tasks} task_columns: give one weight per task"
            )
        return [float(w) for w in weights]

    def _settings(self, values: Mapping[str, Any]) -> FineTuneSettings:
        """The fine-tuning loop's settings of a run: ours (device, buckets, ...) with the reference's options."""
        clipping = values.get("gradient_clipping", self.gradient_clipping)
        max_norm = values.get("max_grad_norm", self.max_grad_norm)
        changes = {
            "num_train_epochs": float(values.get("epochs", self.epochs)),
            "per_device_train_batch_size": int(values.get("batch_size", self.batch_size)),
            "gradient_accumulation_steps": int(
                values.get("gradient_accumulation_steps", self.gradient_accumulation_steps)
            ),
            "max_grad_norm": float(max_norm) if clipping else 0.0,  # 0: no clipping
            "seed": int(values.get("seed", self.seed)),
            "strategy": "finetune",
            "save_total_limit": 0,
        }
        for key in ("learning_rate", "warmup_ratio", "weight_decay", "lr_scheduler_type"):
            if key in values:
                changes[key] = values[key]
        if "max_layers_to_freeze" in values:
            changes["freeze_layers"] = int(values["max_layers_to_freeze"])
        settings = self.settings.replace(**changes)
        settings.validate()
        return settings

    def _check_launch(self) -> None:
        from mindformer_gf.train.distributed import launched_by_msrun

        launch = (
            f"msrun --worker_num=N --local_worker_num=N --master_addr={self.master_addr} "
            f"--master_port={self.master_port} your_script.py"
        )
        if self.distributed_training and not launched_by_msrun():
            logger.warning("distributed_training=True but not started by msrun: one device; launch: %s", launch)
        elif launched_by_msrun():
            host, port = os.environ.get("MS_SCHED_HOST"), os.environ.get("MS_SCHED_PORT")
            if (host, port) != (self.master_addr, str(self.master_port)) and host is not None:
                logger.warning(
                    "msrun's master is %s:%s, not master_addr:master_port %s:%s: msrun's is used",
                    host,
                    port,
                    self.master_addr,
                    self.master_port,
                )

    # ---- one training run ----------------------------------------------------------------------------------------
    def _train_and_validate(
        self,
        data: _TrainingData,
        values: dict[str, Any],
        run_name: str,
        run_dir: Path,
        trial_number: int | None = None,
    ) -> _RunResult:
        """Train on the training set for `epochs` (final weights kept), predict the validation set, write its
        predictions and metrics; the validation loss is sum_t w_t * mean cross-entropy_t."""
        from mindformer_gf.finetune.fit import fit
        from mindformer_gf.finetune.metrics import softmax
        from mindformer_gf.finetune.runs import bucket_widths, sharded_forward, training_source
        from mindformer_gf.finetune.task_model import MultitaskObjective
        from mindformer_gf.io import write_json
        from mindformer_gf.tasks.multitask import MultitaskClassifier, MultitaskData
        from mindformer_gf.train.device import prepare_device, seed_everything

        settings = self._settings(values)
        prepare_device(settings.device)
        seed_everything(settings.seed)
        weights = values["task_weights"]
        pooling = "attention" if values["use_attention_pooling"] else "cls"
        classifier = MultitaskClassifier(
            self.task_columns,
            task_weights=weights,
            pooling=pooling,
            settings=settings,
            classifier_dropout=float(values["dropout_rate"]),
        )
        id2labels = [{i: str(v) for v, i in data.train_maps[t].items()} for t in data.tasks]
        rows = np.arange(data.train.num_rows)
        multitask_data = MultitaskData(
            rows, list(self.task_columns), data.train_labels, id2labels, [False] * len(weights)
        )
        model = classifier.build_model(self.pretrained_path, multitask_data)
        max_width = model.config.max_position_embeddings
        buckets = bucket_widths(_lengths(data.train), settings, max_width)
        source = training_source(data.train, buckets, settings, task_labels=data.train_labels, pad_token_id=data.pad_id)
        objective = MultitaskObjective(model, [False] * len(weights), weights)
        run_config = {"task": "MTLClassifier", "run": run_name, "tasks": list(self.task_columns), **_plain(values)}
        fit(model, objective, source, settings, run_dir / "training", None, run_config=run_config)

        val_rows = np.arange(data.val.num_rows)
        val_buckets = bucket_widths(_lengths(data.val), settings, max_width)
        record = {"command": f"MTLClassifier {run_name}", "pass": "validation"}
        outputs, job = sharded_forward(
            model, data.val, val_rows, settings, val_buckets, run_dir, "validation", record, data.pad_id, "validation"
        )
        job.remove_shards()
        if outputs is None:
            return _RunResult(model, None, None)
        probabilities = [softmax(np.asarray(o, np.float64)) for o in outputs]
        per_cell = [
            -np.log(np.maximum(p[np.arange(len(lab)), lab], 1e-300))
            for p, lab in zip(probabilities, data.val_labels, strict=True)
        ]
        val_loss = float(sum(w * c.mean() for w, c in zip(weights, per_cell, strict=True)))
        metrics: dict[str, Any] = {"val_loss": val_loss}
        for t, task in enumerate(data.tasks):
            metrics[task] = {
                "column": self.task_columns[t],
                **_task_metrics(data.val_labels[t], probabilities[t], data.train_maps[task]),
            }
            print(
                f"{task} - Validation F1 Macro: {metrics[task]['f1']:.4f}, "
                f"Validation Accuracy: {metrics[task]['accuracy']:.4f}"
            )
        if trial_number is None:
            preds_path = Path(self.results_dir) / "manual_run_val_preds.csv"
            metrics_path = Path(self.results_dir) / "manual_run_val_metrics.json"
        else:
            preds_path = run_dir / "val_preds.csv"
            metrics_path = run_dir / "val_metrics.json"
        _write_val_preds(preds_path, data, probabilities)
        write_json(metrics_path, metrics)
        _RunLog(self, run_name).log_run(run_dir / "training" / "metrics.csv", metrics, data.tasks)
        return _RunResult(model, val_loss, metrics)

    def _save_model(self, model: Any, data: _TrainingData, values: dict[str, Any], hyperparameters: dict) -> Path:
        """model_save_path/GeneformerMultiTask: our multitask model directory (replaced atomically) and the
        reference's hyperparameters.json."""
        from mindformer_gf.finetune.runs import task_description
        from mindformer_gf.finetune.task_model import save_task_model
        from mindformer_gf.io import write_json

        settings = self._settings(values)
        directory = Path(self.model_save_path) / MODEL_DIR_NAME
        description = task_description(
            "multitask",
            settings,
            tasks=list(self.task_columns),
            task_sizes=[len(data.train_maps[t]) for t in data.tasks],
            task_weights=values["task_weights"],
            regression=[False] * len(data.tasks),
            pooling="attention" if values["use_attention_pooling"] else "cls",
            id2labels=[{str(i): str(v) for v, i in data.train_maps[t].items()} for t in data.tasks],
            target_scales=[None] * len(data.tasks),
            source_model=str(self.pretrained_path),
            reference_task_names=data.tasks,
            dropout_rate=float(values["dropout_rate"]),
        )
        save_task_model(model, directory, description)
        write_json(directory / HYPERPARAMETERS_FILE, _plain(hyperparameters))
        print(f"Model and configuration saved to {directory}")
        return directory


# ---- pieces ------------------------------------------------------------------------------------------------------
@dataclass
class _TrainingData:
    tasks: list[str]  # "task1", "task2", ...
    train: Any
    val: Any
    pad_id: int
    train_maps: dict[str, dict[Any, int]]
    train_labels: list[np.ndarray]
    val_labels: list[np.ndarray]
    n_layers: int


@dataclass
class _RunResult:
    model: Any
    val_loss: float | None
    metrics: dict[str, Any] | None


def _msrun_scheduler() -> bool:
    """Whether this is msrun's scheduler process, which runs the script too but takes no share of the work."""
    return os.environ.get("MS_ROLE") == "MS_SCHED" and "MS_WORKER_NUM" in os.environ


def _serve_as_scheduler() -> None:
    """msrun's scheduler during a training run: the cluster's meta server until the workers are done."""
    from mindformer_gf.train.distributed import init_distributed

    try:
        init_distributed()
    except RuntimeError:
        pass  # a worker failed or vanished: its own log says why


def _wait_for_rank_0() -> None:
    """Under msrun, every rank waits here until rank 0 has written the run's files (a sum over the ranks: each rank
    calls it once, rank 0 after writing), so that what the script does next on any rank finds them."""
    from mindformer_gf.train.distributed import init_distributed

    if not init_distributed().distributed:
        return
    import mindspore as ms
    from mindspore import nn, ops

    class SumOverRanks(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.all_reduce = ops.AllReduce()

        def construct(self, values: ms.Tensor) -> ms.Tensor:
            return self.all_reduce(values)

    SumOverRanks()(ms.Tensor(np.ones(1, np.float32))).asnumpy()


def _path_text(path: Any) -> Any:
    return os.fspath(path) if isinstance(path, os.PathLike) else path


def _layer_count(pretrained_path: str) -> int:
    from mindformer_gf.infer.datasets import model_config_of

    return int(model_config_of(pretrained_path).num_hidden_layers)


def _open_dataset(path: str, config: Any, keyword: str) -> tuple[Any, int]:
    from mindformer_gf.infer.datasets import dataset_for_model

    if not Path(path).is_dir():
        raise FileNotFoundError(f"{keyword} {path} is not a tokenized dataset directory: tokenize the cells first")
    return dataset_for_model(path, config)


def _lengths(dataset: Any) -> np.ndarray:
    from mindformer_gf.data import corpus_lengths

    return corpus_lengths(dataset)


def _label_mappings(dataset: Any, tasks: list[str], columns: Sequence[str], which: str) -> dict[str, dict[Any, int]]:
    """{task: {label: index}} over the sorted distinct values of each column (the reference's mapping)."""
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"the {which} dataset has no column(s) {missing}; its columns: {dataset.column_names}")
    mappings = {}
    for task, column in zip(tasks, columns, strict=True):
        values = set(dataset[column])
        if None in values:
            raise ValueError(f"column {column!r} of the {which} dataset has missing values: filter those cells out")
        try:
            ordered = sorted(values)
        except TypeError:
            raise ValueError(f"column {column!r} of the {which} dataset mixes value types: use one type") from None
        mappings[task] = {label: index for index, label in enumerate(ordered)}
    return mappings


def _encode(dataset: Any, column: str, mapping: dict[Any, int]) -> np.ndarray:
    return np.asarray([mapping[v] for v in dataset[column]], np.int32)


def _cell_ids(dataset: Any) -> list[Any]:
    if "unique_cell_id" in dataset.column_names:
        return list(dataset["unique_cell_id"])
    return [f"cell_{i}" for i in range(dataset.num_rows)]


def _task_metrics(labels: np.ndarray, probabilities: np.ndarray, mapping: dict[Any, int]) -> dict[str, Any]:
    """The reference's "f1" (macro over the classes present, sklearn's default) and "accuracy", with ours:
    macro-F1 over every class of the task and the confusion matrix."""
    from sklearn.metrics import f1_score

    from mindformer_gf.finetune.metrics import classification_metrics

    names = [str(v) for v, _ in sorted(mapping.items(), key=lambda item: item[1])]
    ours = classification_metrics(labels, probabilities, names)
    predicted = probabilities.argmax(1)
    return {
        "f1": float(f1_score(labels, predicted, average="macro")),
        "accuracy": ours["accuracy"],
        "macro_f1_all_classes": ours["macro_f1"],
        "n": ours["n"],
        "classes": names,
        "confusion_matrix": ours["confusion_matrix"],
    }


def _write_val_preds(path: Path, data: _TrainingData, probabilities: list[np.ndarray]) -> Path:
    """The reference's validation predictions: per cell, per task the true and predicted index and label, every
    probability joined and one column per class."""
    import pandas as pd

    from mindformer_gf.io import write_csv

    frame = pd.DataFrame({"Cell ID": _cell_ids(data.val)})
    for t, task in enumerate(data.tasks):
        inverted = {i: v for v, i in data.train_maps[task].items()}
        truth, probs = data.val_labels[t], probabilities[t]
        predicted = probs.argmax(1)
        frame[f"{task}_true_idx"] = truth
        frame[f"{task}_pred_idx"] = predicted
        frame[f"{task}_true_label"] = [inverted[i] for i in truth]
        frame[f"{task}_pred_label"] = [inverted[i] for i in predicted]
        frame[f"{task}_all_probs"] = [",".join(map(str, p)) for p in probs]
        for index in range(probs.shape[1]):
            frame[f"{task}_prob_{inverted[index]}"] = probs[:, index]
    return write_csv(path, frame)


def _write_pickle(path: Path, data: Any) -> Path:
    """Plain data (dicts of labels and ints) as a pickle, written under a temporary name then renamed."""
    from mindformer_gf.io import write_bytes

    return write_bytes(path, pickle.dumps(_plain(data)))


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, recursively (pickles and JSON we write hold plain data)."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _spec(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A search-space entry in our form: the reference draws categorical for "choices" and float otherwise
    (its "type" is informative), log-uniform with "log": True."""
    if not isinstance(spec, Mapping):
        raise ValueError(f'hyperparameters[{name!r}] must be a dict like {{"type": "float", "low": 0.0, "high": 1.0}}')
    spec = dict(spec)
    if "choices" in spec:
        return {"type": "categorical", "choices": list(spec["choices"])}
    if "low" not in spec or "high" not in spec:
        raise ValueError(f'hyperparameters[{name!r}] needs "low" and "high" (or "choices"), got {spec}')
    kind = spec.get("type", "float")
    if kind not in ("float", "int"):
        raise ValueError(f'hyperparameters[{name!r}]: type must be "float", "int" or "categorical", got {kind!r}')
    return {"type": kind, "low": float(spec["low"]), "high": float(spec["high"]), "log": bool(spec.get("log", False))}


class _RunLog:
    """TensorBoard and Weights & Biases logging of a finished run (the reference's tags), when installed."""

    def __init__(self, owner: MTLClassifier, run_name: str) -> None:
        self.owner, self.run_name = owner, run_name

    def log_run(self, metrics_csv: Path, metrics: dict[str, Any], tasks: list[str]) -> None:
        scalars = self._scalars(metrics_csv, metrics, tasks)
        if self.owner.tensorboard_log_dir is not None:
            self._tensorboard(scalars)
        if self.owner.use_wandb:
            self._wandb(scalars)

    def _scalars(self, metrics_csv: Path, metrics: dict[str, Any], tasks: list[str]) -> list[tuple[str, float, int]]:
        import pandas as pd

        rows: list[tuple[str, float, int]] = []
        if metrics_csv.is_file():
            frame = pd.read_csv(metrics_csv)
            if "loss" in frame and "step" in frame:
                rows += [("Training Loss", float(v), int(s)) for s, v in zip(frame["step"], frame["loss"], strict=True)]
        epoch = int(self.owner.epochs)
        rows.append(("Validation Loss", float(metrics["val_loss"]), epoch))
        for task in tasks:
            rows.append((f"{task} - Validation F1 Macro", float(metrics[task]["f1"]), epoch))
            rows.append((f"{task} - Validation Accuracy", float(metrics[task]["accuracy"]), epoch))
        return rows

    def _say_missing(self, what: str) -> None:
        if what not in self.owner._said_missing:
            self.owner._said_missing.add(what)
            logger.warning(what)

    def _tensorboard(self, scalars: list[tuple[str, float, int]]) -> None:
        import importlib.util

        writer_class = None
        if importlib.util.find_spec("tensorboardX") is not None:
            from tensorboardX import SummaryWriter as writer_class
        elif importlib.util.find_spec("tensorboard") is not None and importlib.util.find_spec("torch") is not None:
            from torch.utils.tensorboard import SummaryWriter as writer_class
        if writer_class is None:
            self._say_missing(
                "tensorboard_log_dir: no TensorBoard writer installed (pip install tensorboardX): not logged there; "
                "the numbers are in the run's training/metrics.csv and val_metrics.json"
            )
            return
        log_dir = os.path.join(self.owner.tensorboard_log_dir, self.run_name)
        try:
            os.makedirs(log_dir, exist_ok=True)
        except OSError as err:
            self._say_missing(f"tensorboard_log_dir {self.owner.tensorboard_log_dir}: not writable ({err}): not logged")
            return
        writer = writer_class(log_dir=log_dir)
        try:
            for tag, value, step in scalars:
                writer.add_scalar(tag, value, step)
        finally:
            writer.close()

    def _wandb(self, scalars: list[tuple[str, float, int]]) -> None:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            self._say_missing("use_wandb=True but wandb is not installed (pip install wandb): not logged there")
            return
        import wandb

        run = wandb.init(
            project=self.owner.wandb_project or "geneformer_multitask",
            name=self.run_name,
            config=_plain({k: v for k, v in self.owner.config.items() if not isinstance(v, float) or math.isfinite(v)}),
            reinit=True,
        )
        try:
            for tag, value, _ in scalars:
                wandb.log({tag: value})
        finally:
            run.finish()


__all__ = ["MTLClassifier", "REFERENCE_MANUAL_HYPERPARAMETERS", "REFERENCE_SEARCH_SPACE"]
