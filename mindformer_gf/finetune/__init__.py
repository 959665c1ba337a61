"""Fine-tuning, shared by every task: the settings and the fit on the training loop (`fit`), the strategies, heads
and objectives and the saved task model (`task_model`), labels (`labels`), splits (`splits`), metrics and plots
(`metrics`), the hyperparameter search (`search`), and what a run does around `fit` (`runs`)."""

from mindformer_gf.finetune.fit import FineTuneSettings, FitResult, fit

__all__ = ["FineTuneSettings", "FitResult", "fit"]
