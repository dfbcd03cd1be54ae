"""Top-1 and top-5 accuracy of a trained model, computed with NumPy from its predictions."""

import dataclasses
import json
import os
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from keras_densenet import data
from keras_densenet.training.config import TrainConfig
from keras_densenet.utils import files

TOP5_MIN_CLASSES = 11  # Top-5 accuracy is reported only with more than 10 classes.


def top_k_accuracy(scores, labels, k):
    """Return the fraction of rows of `scores` whose true label is among the `k` highest scores.

    A row counts as correct when fewer than `k` classes score strictly higher than its label, so a
    tie with the label never counts against it.

    Args:
        scores: Array of shape `(num_examples, num_classes)`.
        labels: Integer array of shape `(num_examples,)`.
        k: Positive number of top classes.

    Raises:
        ValueError: on mismatched shapes, an empty input, labels outside `[0, num_classes)`, or `k < 1`.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0] or scores.shape[0] == 0:
        raise ValueError(
            "`scores` must have shape (num_examples, num_classes) with one row per label and at least "
            f"one row. Received: scores.shape={scores.shape}, labels.shape={labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(
            f"`labels` must be in [0, {scores.shape[1]}). Received: labels in [{labels.min()}, {labels.max()}]"
        )
    if k < 1:
        raise ValueError(f"`k` must be a positive integer. Received: k={k!r}")
    label_scores = scores[np.arange(len(labels)), labels]
    num_higher = np.sum(scores > label_scores[:, None], axis=1)
    return float(np.mean(num_higher < k))


def evaluate_model(model, dataset, num_classes):
    """Compute top-1 (and top-5 when `num_classes > 10`) accuracy of `model` on `dataset`.

    The model runs in inference mode outside any distribution strategy, batch by batch, and the
    accuracies are computed with NumPy from its outputs.

    Args:
        model: A model that maps a batch of images to `num_classes` scores per image.
        dataset: An iterable of `(images, labels)` batches, e.g. a `tf.data.Dataset`.
        num_classes: Number of classes of the model's output.

    Returns:
        A dict with `top1`, `top5` (only when `num_classes > 10`) and `num_examples`.

    Raises:
        ValueError: if `dataset` is empty or the model output does not have `num_classes` columns.
    """
    # One trace for every batch size, including the last partial batch.
    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)]
    predict = tf.function(lambda images: model(images, training=False), input_signature=signature)
    all_scores, all_labels = [], []
    for images, labels in dataset:
        all_scores.append(np.asarray(predict(images)))
        all_labels.append(np.asarray(labels).reshape(-1))
    if not all_scores:
        raise ValueError("`dataset` must yield at least one (images, labels) batch. Received: an empty dataset")
    scores = np.concatenate(all_scores)
    labels = np.concatenate(all_labels)
    if scores.shape[-1] != num_classes:
        raise ValueError(
            f"The model outputs {scores.shape[-1]} scores per image, but `num_classes` is {num_classes}. "
            f"Received: num_classes={num_classes}"
        )
    metrics = {"top1": top_k_accuracy(scores, labels, 1), "num_examples": int(len(labels))}
    if num_classes >= TOP5_MIN_CLASSES:
        metrics["top5"] = top_k_accuracy(scores, labels, 5)
    return metrics


def load_trained_model(model_dir):
    """Load the float model that densenet-train saved as `model_dir/model.h5`, without its optimizer.

    Raises:
        ValueError: naming the path, if `model_dir` or the model file is missing or cannot be read.
    """
    model_dir = os.fspath(model_dir)
    path = os.path.join(model_dir, "model.h5")
    if not os.path.isdir(model_dir):
        raise ValueError(
            f"`model_dir` does not exist; run densenet-train with --model_dir={model_dir} first. "
            f"Received: model_dir={model_dir!r}"
        )
    if not os.path.isfile(path):
        raise ValueError(
            f"{path} not found: `model_dir` contains no finished training run; run densenet-train with "
            f"--model_dir={model_dir} until it ends. Received: model_dir={model_dir!r}"
        )
    try:
        return tf_keras.models.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ValueError(
            f"{path} is not a readable tf_keras HDF5 model ({reason}); run the densenet-train command of "
            f"this run again, which rewrites it from the last checkpoint. Received: model_dir={model_dir!r}"
        ) from None


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Settings of `run`.

    Attributes:
        model_dir: Folder of a finished densenet-train run (config.json and model.h5).
        data_dir: TFDS data folder; `None` uses the one saved in the run's config.
        manual_dir: Folder of manually downloaded archives; `None` uses the one saved in the config.
        batch_size: Evaluation batch size; `None` uses the run's training batch size.
        take: Number of test examples to evaluate; `None` evaluates the whole test split.
    """

    model_dir: str
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    batch_size: Optional[int] = None
    take: Optional[int] = None


def run(config):
    """Evaluate the model of a training run on its dataset's test split; write `evaluation.json`.

    Returns:
        The `evaluate_model` metrics.

    Raises:
        ValueError: on a missing or unreadable run in `config.model_dir`, or a non-positive
            `batch_size` or `take`.
    """
    for name in ("batch_size", "take"):
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be a positive integer or None. Received: {name}={value!r}")
    model = load_trained_model(config.model_dir)
    config_path = os.path.join(os.fspath(config.model_dir), "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            train_config = TrainConfig.from_json(f.read())
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(
            f"{config_path} is missing or not a densenet-train config ({error}); run densenet-train again in "
            f"a new `model_dir`. Received: model_dir={config.model_dir!r}"
        ) from None

    data_dir = config.data_dir or train_config.data_dir
    manual_dir = config.manual_dir or train_config.manual_dir
    info = data.get_dataset_info(train_config.dataset, data_dir=data_dir, manual_dir=manual_dir)
    dataset = data.make_dataset(
        info,
        info.test_split,
        config.batch_size or train_config.batch_size,
        training=False,
        data_dir=data_dir,
        manual_dir=manual_dir,
        take=config.take,
    )
    logging.info("Evaluating %s on the %s split of %s.", config.model_dir, info.test_split, info.name)
    metrics = evaluate_model(model, dataset, info.num_classes)
    logging.info("Test metrics: %s", json.dumps(metrics, sort_keys=True))
    files.write_json_atomic(os.path.join(os.fspath(config.model_dir), "evaluation.json"), metrics)
    return metrics
