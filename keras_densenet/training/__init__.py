"""Training and evaluation: the configuration, strategies, the learning-rate schedule and the runs.

The names below load their module on first use, so that importing the configuration (as the scripts
do before parsing flags) does not import TensorFlow.
"""

import importlib

_EXPORTS = {
    "MIXED_PRECISION_POLICIES": "config",
    "RECIPES": "config",
    "STRATEGIES": "config",
    "TrainConfig": "config",
    "scaled_learning_rate": "config",
    "create_strategy": "distribute",
    "resolve_cluster": "distribute",
    "EvaluateConfig": "evaluate",
    "evaluate_model": "evaluate",
    "load_trained_model": "evaluate",
    "top_k_accuracy": "evaluate",
    "StepDecaySchedule": "schedule",
    "TrainResult": "train",
    "build_model": "train",
    "run": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
