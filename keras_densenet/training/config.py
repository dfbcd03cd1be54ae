"""The training configuration: one frozen record that the train script builds, validates and saves."""

import dataclasses
import json
import os
import secrets
from typing import Optional, Tuple

from keras_densenet.model import specs

STRATEGIES = ("one_device", "mirrored", "multi_worker", "tpu")
# "default" is the earlier name of "one_device"; `resolve` replaces it.
STRATEGY_ALIASES = {"default": "one_device"}
MIXED_PRECISION_POLICIES = ("none", "mixed_float16", "mixed_bfloat16")

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

# The learning rate is scaled linearly with the global batch size (Goyal et al., "Accurate, Large
# Minibatch SGD", 2017): `learning_rate = 0.1 * batch_size / lr_reference_batch_size` when no learning
# rate is given. The reference batch is 64 for CIFAR and 256 for ImageNet, where Huang et al. used 0.1.
PAPER_DECAY_FRACTIONS = (0.5, 0.75)

# Named recipes of Huang et al.: every field they set, and which flags override.
RECIPES = {
    "none": {},
    "cifar": dict(
        dataset="cifar10",
        epochs=300,
        batch_size=64,
        lr_reference_batch_size=64,
        augment=True,
        decay_fractions=(0.5, 0.75),
    ),
    "imagenet": dict(
        dataset="imagenet2012",
        variant="densenet121",
        epochs=90,
        batch_size=256,
        lr_reference_batch_size=256,
        augment=True,
        decay_fractions=(1 / 3, 2 / 3),
    ),
}

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
        batch_size: Global batch size, summed over all replicas of all workers and split evenly over
            them. One step consumes one global batch.
        learning_rate: Initial (peak) learning rate of the step schedule; `None` scales the paper's
            0.1 linearly with the batch: `0.1 * batch_size / lr_reference_batch_size`.
        lr_reference_batch_size: Batch size at which an unset `learning_rate` is 0.1.
        warmup_epochs: Epochs (may be fractional) over which the learning rate ramps up linearly
            from `learning_rate / warmup_steps` to `learning_rate`; 0 disables the warmup.
        decay_fractions: Fractions of the total training steps at which the learning rate is divided
            by 10, in increasing order.
        weight_decay: Coupled L2 weight decay: every weight `w` adds `weight_decay / 2 * sum(w ** 2)`
            to the loss.
        dropout_rate: Dropout rate after each convolution; `None` means 0.2 without augmentation
            and 0.0 with it.
        augment: Whether to augment the training data; `None` uses the dataset's default.
        strategy: One of `STRATEGIES`, or "default", an alias of "one_device".
        tpu: For `strategy="tpu"`: "local" for a TPU attached to this host (a TPU VM), or the name or
            "grpc://host:port" address of a Cloud TPU.
        cluster_timeout: Seconds that a `multi_worker` process waits for the other workers to
            connect before it exits with an error.
        mixed_precision: One of `MIXED_PRECISION_POLICIES`: "mixed_float16" for GPUs,
            "mixed_bfloat16" for CPUs and TPUs. The classifier and the loss stay float32.
        jit_compile: Whether to compile the training step with XLA.
        deterministic: Whether to enable `tf.config.experimental.enable_op_determinism`, so that a run
            (and a resumed run) with the same seed gives the same weights.
        recipe: Name of the `RECIPES` entry that filled the unset fields, recorded in config.json.
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
    learning_rate: Optional[float] = None
    lr_reference_batch_size: int = PAPER_BATCH_SIZE
    warmup_epochs: float = 0.0
    decay_fractions: Tuple[float, ...] = PAPER_DECAY_FRACTIONS
    weight_decay: float = PAPER_WEIGHT_DECAY
    dropout_rate: Optional[float] = None
    augment: Optional[bool] = None
    strategy: str = "one_device"
    tpu: str = "local"
    cluster_timeout: int = 600
    mixed_precision: str = "none"
    jit_compile: bool = False
    deterministic: bool = False
    recipe: str = "none"
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
        if self.learning_rate is not None and (not _is_number(self.learning_rate) or not self.learning_rate > 0):
            raise ValueError(
                "`learning_rate` must be a positive number, or None for 0.1 * batch_size / lr_reference_batch_size. "
                f"Received: learning_rate={self.learning_rate!r}"
            )
        _check_positive_int("lr_reference_batch_size", self.lr_reference_batch_size)
        _check_positive_int("cluster_timeout", self.cluster_timeout)
        if not _is_number(self.warmup_epochs) or not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"`warmup_epochs` must be a number in [0, epochs={self.epochs}). Received: warmup_epochs={self.warmup_epochs!r}"
            )
        _check_decay_fractions(self.decay_fractions)
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
        if self.strategy not in STRATEGIES and self.strategy not in STRATEGY_ALIASES:
            raise ValueError(
                f"`strategy` must be one of {STRATEGIES} (or 'default', an alias of 'one_device'). "
                f"Received: strategy={self.strategy!r}"
            )
        if not isinstance(self.tpu, str) or not self.tpu:
            raise ValueError(f"`tpu` must be 'local', a Cloud TPU name or a grpc://host:port address. Received: tpu={self.tpu!r}")
        if self.mixed_precision not in MIXED_PRECISION_POLICIES:
            raise ValueError(
                f"`mixed_precision` must be one of {MIXED_PRECISION_POLICIES}. Received: mixed_precision={self.mixed_precision!r}"
            )
        for name in ("jit_compile", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False. Received: {name}={getattr(self, name)!r}")
        if self.recipe not in RECIPES:
            raise ValueError(f"`recipe` must be one of {tuple(RECIPES)}. Received: recipe={self.recipe!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"`seed` must be a non-negative integer or None. Received: seed={self.seed!r}")
        return self

    def resolve(self, info, num_replicas):
        """Return a copy with `dropout_rate`, `augment`, `seed`, `learning_rate` and `strategy` decided.

        Every field is checked first. An unset `learning_rate` becomes
        `0.1 * batch_size / lr_reference_batch_size`, and the strategy alias "default" becomes
        "one_device".

        Args:
            info: The dataset's `DatasetInfo` from `keras_densenet.data.get_dataset_info`.
            num_replicas: Number of replicas that share each global batch.

        Returns:
            A new `TrainConfig` whose `dropout_rate`, `augment`, `seed` and `learning_rate` are not `None`.

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
        learning_rate = self.learning_rate
        if learning_rate is None:
            learning_rate = scaled_learning_rate(self.batch_size, self.lr_reference_batch_size)
        return dataclasses.replace(
            self,
            augment=bool(augment),
            dropout_rate=float(dropout_rate),
            seed=seed,
            learning_rate=float(learning_rate),
            strategy=STRATEGY_ALIASES.get(self.strategy, self.strategy),
            decay_fractions=tuple(float(value) for value in self.decay_fractions),
        )

    def to_dict(self):
        """Return the fields as a JSON-compatible dict."""
        values = dataclasses.asdict(self)
        values["model_dir"] = os.fspath(self.model_dir)
        values["decay_fractions"] = list(self.decay_fractions)
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
        values = dict(values)
        if isinstance(values.get("decay_fractions"), list):
            values["decay_fractions"] = tuple(values["decay_fractions"])
        return cls(**values)

    @classmethod
    def from_recipe(cls, recipe, model_dir, **overrides):
        """Build a config from a named recipe of Huang et al. (CVPR 2017), with `overrides` on top.

        - "cifar": cifar10, 300 epochs, batch 64, augmentation, learning rate 0.1 divided by 10 at
          50% and 75% of the steps (epochs 150 and 225).
        - "imagenet": imagenet2012, DenseNet-121, 90 epochs, batch 256, augmentation, learning rate
          0.1 divided by 10 at 1/3 and 2/3 of the steps (epochs 30 and 60).
        - "none": the `TrainConfig` defaults.

        Raises:
            ValueError: on an unknown recipe, or an override that is not a `TrainConfig` field.
        """
        if recipe not in RECIPES:
            raise ValueError(f"`recipe` must be one of {tuple(RECIPES)}. Received: recipe={recipe!r}")
        return cls.from_dict({**RECIPES[recipe], **overrides, "model_dir": model_dir, "recipe": recipe})

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


def scaled_learning_rate(batch_size, reference_batch_size=PAPER_BATCH_SIZE):
    """Return the paper's learning rate 0.1 scaled linearly from `reference_batch_size` to `batch_size`."""
    return PAPER_LEARNING_RATE * batch_size / reference_batch_size


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


def _check_decay_fractions(fractions):
    valid = isinstance(fractions, (tuple, list)) and all(_is_number(value) and 0 < value < 1 for value in fractions)
    if not valid or list(fractions) != sorted(set(fractions)):
        raise ValueError(
            "`decay_fractions` must be increasing fractions in (0, 1) of the training steps, e.g. (0.5, 0.75). "
            f"Received: decay_fractions={fractions!r}"
        )


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
