"""The training configuration: one frozen record that the train script builds, validates and saves."""

import dataclasses
import json
import os
import secrets
from typing import Optional

from keras_densenet.model import specs

STRATEGIES = ("default", "mirrored", "multi_worker")

# The training recipe of Huang et al., "Densely Connected Convolutional Networks" (CVPR 2017).
# They train with SGD with Nesterov momentum 0.9 and batch size 64 for 300 epochs on CIFAR. The
# learning rate starts at 0.1 and is divided by 10 at 50% and at 75% of the epochs. Weight decay is
# 1e-4, and dropout 0.2 follows each convolution when the data is not augmented.
PAPER_EPOCHS = 300
PAPER_BATCH_SIZE = 64
PAPER_LEARNING_RATE = 0.1
PAPER_MOMENTUM = 0.9
PAPER_WEIGHT_DECAY = 1e-4
PAPER_DROPOUT_RATE = 0.2

# Fields that change the network or the training data. A run that resumes in an existing model_dir
# must keep them, because the saved weights and optimizer state belong to them.
RESUME_FIELDS = ("variant", "dataset", "augment", "dropout_rate", "weight_decay", "batch_size", "take_train")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run.

    `None` in `dropout_rate`, `augment` and `seed` means "decide from the dataset": `resolve` replaces
    them with concrete values, and the resolved record is what the run logs and saves.

    Attributes:
        model_dir: Folder of the run's outputs: config.json, history.json, model.h5, checkpoints/,
            backup/ and logs/. A second run in the same folder resumes.
        variant: A name from `keras_densenet.VARIANTS`.
        dataset: A dataset name that `keras_densenet.data.get_dataset_info` accepts.
        data_dir: TFDS data folder; `None` uses the TFDS default.
        manual_dir: Folder of manually downloaded archives (ImageNet); `None` uses the TFDS default.
        epochs: Total number of training epochs, counting the epochs of earlier runs in `model_dir`.
            The learning-rate boundaries are 50% and 75% of this total, so resuming with a larger
            value also moves them.
        batch_size: Global batch size, split evenly over all replicas.
        learning_rate: Initial learning rate of the step schedule.
        weight_decay: Coupled L2 weight decay: every weight `w` adds `weight_decay / 2 * sum(w ** 2)`
            to the loss.
        dropout_rate: Dropout rate after each convolution; `None` means 0.2 without augmentation
            and 0.0 with it.
        augment: Whether to augment the training data; `None` uses the dataset's default.
        strategy: One of `STRATEGIES`.
        seed: Seed of weight initialization, shuffling and augmentation; `None` draws one at random
            (and saves it, so the run can be repeated).
        take_train: Number of training examples to use; `None` uses the whole training split.
        validate: Whether to evaluate on the test split after every epoch.
        steps_per_execution: Number of training steps per `tf.function` call.
    """

    model_dir: str
    variant: str = "densenet_bc40_k12"
    dataset: str = "digits"
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    epochs: int = PAPER_EPOCHS
    batch_size: int = PAPER_BATCH_SIZE
    learning_rate: float = PAPER_LEARNING_RATE
    weight_decay: float = PAPER_WEIGHT_DECAY
    dropout_rate: Optional[float] = None
    augment: Optional[bool] = None
    strategy: str = "default"
    seed: Optional[int] = None
    take_train: Optional[int] = None
    validate: bool = True
    steps_per_execution: int = 1

    def validate_fields(self):
        """Check every field that can be checked without the dataset or the devices.

        Returns:
            `self`, so calls can be chained.

        Raises:
            ValueError: naming the first invalid field, its allowed values and the received value.
        """
        if not isinstance(self.model_dir, (str, os.PathLike)) or not os.fspath(self.model_dir):
            raise ValueError(f"`model_dir` must be a non-empty folder path. Received: model_dir={self.model_dir!r}")
        specs.get_spec(self.variant)
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"`dataset` must be a non-empty dataset name. Received: dataset={self.dataset!r}")
        _check_positive_int("epochs", self.epochs)
        _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("steps_per_execution", self.steps_per_execution)
        if self.take_train is not None:
            _check_positive_int("take_train", self.take_train)
        if not _is_number(self.learning_rate) or not self.learning_rate > 0:
            raise ValueError(
                f"`learning_rate` must be a positive number. Received: learning_rate={self.learning_rate!r}"
            )
        if not _is_number(self.weight_decay) or not self.weight_decay >= 0:
            raise ValueError(
                f"`weight_decay` must be a non-negative number. Received: weight_decay={self.weight_decay!r}"
            )
        if self.dropout_rate is not None and not (_is_number(self.dropout_rate) and 0 <= self.dropout_rate < 1):
            raise ValueError(
                "`dropout_rate` must be in [0, 1), or None for 0.2 without augmentation and 0 with it. "
                f"Received: dropout_rate={self.dropout_rate!r}"
            )
        if self.augment is not None and not isinstance(self.augment, bool):
            raise ValueError(f"`augment` must be True, False or None. Received: augment={self.augment!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={self.strategy!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"`seed` must be a non-negative integer or None. Received: seed={self.seed!r}")
        return self

    def resolve(self, info, num_replicas):
        """Return a copy with `dropout_rate`, `augment` and `seed` decided, after checking every field.

        Args:
            info: The dataset's `DatasetInfo` from `keras_densenet.data.get_dataset_info`.
            num_replicas: Number of replicas that share each global batch.

        Returns:
            A new `TrainConfig` whose `dropout_rate`, `augment` and `seed` are not `None`.

        Raises:
            ValueError: on an invalid field, or a `batch_size` that is not a multiple of
                `num_replicas`.
        """
        self.validate_fields()
        check_batch_size(self.batch_size, num_replicas)
        augment = info.augment_by_default if self.augment is None else self.augment
        dropout_rate = self.dropout_rate
        if dropout_rate is None:
            dropout_rate = 0.0 if augment else PAPER_DROPOUT_RATE
        seed = self.seed if self.seed is not None else secrets.randbelow(2**31)
        return dataclasses.replace(self, augment=bool(augment), dropout_rate=float(dropout_rate), seed=seed)

    def to_dict(self):
        """Return the fields as a JSON-compatible dict."""
        values = dataclasses.asdict(self)
        values["model_dir"] = os.fspath(self.model_dir)
        return values

    def to_json(self):
        """Return the fields as indented, key-sorted JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, values):
        """Build a config from `to_dict` output.

        Raises:
            ValueError: if `values` has a field that `TrainConfig` does not define or lacks `model_dir`.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown `TrainConfig` fields {unknown}; allowed: {sorted(names)}. Received: {values!r}")
        if "model_dir" not in values:
            raise ValueError(f"A `TrainConfig` needs `model_dir`. Received: {values!r}")
        return cls(**values)

    @classmethod
    def from_json(cls, text):
        """Build a config from `to_json` output.

        Raises:
            ValueError: if `text` is not a JSON object of `TrainConfig` fields.
        """
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"The training config is not valid JSON ({error}). Received: text={text[:200]!r}") from None
        if not isinstance(values, dict):
            raise ValueError(f"The training config must be a JSON object. Received: text={text[:200]!r}")
        return cls.from_dict(values)


def check_batch_size(batch_size, num_replicas):
    """Raise ValueError unless the global `batch_size` splits evenly over `num_replicas` replicas."""
    if batch_size % num_replicas:
        raise ValueError(
            f"`batch_size` must be a multiple of the number of replicas ({num_replicas}), so that every "
            f"replica gets the same share; use e.g. {max(num_replicas, batch_size // num_replicas * num_replicas)}. "
            f"Received: batch_size={batch_size}"
        )


def find_resume_conflict(saved, requested):
    """Return the first field of `RESUME_FIELDS` whose value differs between two resolved configs.

    Returns:
        `(name, saved_value, requested_value)`, or `None` when the configs agree on every field.
    """
    for name in RESUME_FIELDS:
        saved_value = getattr(saved, name)
        requested_value = getattr(requested, name)
        if saved_value != requested_value:
            return name, saved_value, requested_value
    return None


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
