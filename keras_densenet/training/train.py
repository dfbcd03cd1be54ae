"""Training with `model.fit` under a `tf.distribute` strategy, with checkpoints and resumption.

A run writes into `model_dir`:

    config.json       the resolved `TrainConfig`, written before training starts
    history.json      per-epoch metrics and learning rate, accumulated over every run in model_dir
    checkpoints/      weights and optimizer state after every epoch (`ModelCheckpoint`)
    backup/           `BackupAndRestore` state, present only while a run is unfinished
    logs/             TensorBoard logs
    model.h5          the final float model (tf_keras HDF5, without optimizer)
    evaluation.json   top-1 (and top-5) accuracy of the final model on the test split

Running again in the same `model_dir` resumes: from `backup/` when the last run was interrupted,
otherwise from the latest checkpoint, so a larger `epochs` continues a finished run.
"""

import dataclasses
import glob
import json
import os
import random
import re
import tempfile
from typing import Any, Dict

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

import keras_densenet
from keras_densenet import data
from keras_densenet.model import backend
from keras_densenet.training import distribute
from keras_densenet.training import evaluate
from keras_densenet.training.config import PAPER_MOMENTUM
from keras_densenet.training.config import TrainConfig
from keras_densenet.training.config import find_resume_conflict
from keras_densenet.training.schedule import StepDecaySchedule
from keras_densenet.utils import files

CHECKPOINT_PATTERN = "epoch-{epoch:04d}"
_EPOCH_SEED_STRIDE = 1_000_003  # A prime, so that no two (seed, epoch) pairs below it share a seed.
_BACKUP_EPOCH_KEY = "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"
_CHECKPOINT_NAME = re.compile(r"epoch-(\d+)$")


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Paths of the files and folders of one run."""

    model_dir: str
    config: str
    history: str
    model: str
    evaluation: str
    checkpoints: str
    backup: str
    logs: str

    @classmethod
    def in_dir(cls, model_dir):
        """Return the paths of a run in `model_dir`."""
        model_dir = os.fspath(model_dir)
        return cls(
            model_dir=model_dir,
            config=os.path.join(model_dir, "config.json"),
            history=os.path.join(model_dir, "history.json"),
            model=os.path.join(model_dir, "model.h5"),
            evaluation=os.path.join(model_dir, "evaluation.json"),
            checkpoints=os.path.join(model_dir, "checkpoints"),
            backup=os.path.join(model_dir, "backup"),
            logs=os.path.join(model_dir, "logs"),
        )


@dataclasses.dataclass
class TrainResult:
    """Outcome of `run`.

    Attributes:
        model: The trained tf_keras model.
        config: The resolved configuration.
        history: Per-epoch values over every run in `model_dir`: `epoch` (1-based), `loss`,
            `accuracy`, `lr`, and `val_*` metrics when validation is on.
        metrics: `evaluate.evaluate_model` output for the final model on the test split.
        initial_epoch: Number of epochs that were already done when this run started.
        steps_per_epoch: Training steps per epoch.
        paths: The run's file paths.
    """

    model: Any
    config: TrainConfig
    history: Dict[str, list]
    metrics: Dict[str, float]
    initial_epoch: int
    steps_per_epoch: int
    paths: RunPaths


def run(config, extra_callbacks=()):
    """Train (or resume training of) the DenseNet that `config` describes, and evaluate it on the test split.

    Every check of user input runs before the first file is written, so a rejected configuration
    leaves `model_dir` untouched. This function sets the global random seed of Python, NumPy and
    TensorFlow (`tf_keras.utils.set_random_seed`) to `global_seed(seed)` of the resolved seed. It restores the Python and
    NumPy generator states on return, but leaves TensorFlow's global seed set. With
    `config.deterministic` it enables op determinism for the rest of the process. Under mixed
    precision it sets the global tf_keras dtype policy while it builds the model and restores it.

    A loss that becomes NaN or infinite stops training within the epoch. That epoch is neither
    checkpointed nor backed up, so the latest checkpoint stays the last good one.

    Args:
        config: A `TrainConfig`.
        extra_callbacks: Keras callbacks to add to `model.fit`'s own.

    Returns:
        A `TrainResult`.

    Raises:
        ValueError: on an invalid configuration, a batch size that does not split over the replicas,
            a `model_dir` that contains a run with a different architecture or data, or an unreadable
            checkpoint, config or history file in `model_dir`, or a loss that became NaN.
    """
    config.validate_fields()
    strategy = distribute.create_strategy(config.strategy, tpu=config.tpu, cluster_timeout=config.cluster_timeout)
    info = data.get_dataset_info(config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir)
    paths = RunPaths.in_dir(config.model_dir)
    config, history, backup_checkpoint, resume_checkpoint = _prepare_model_dir(config, info, strategy, paths)
    steps_per_epoch = count_steps_per_epoch(config, info)
    logging.info("Training configuration:\n%s", config.to_json())

    chief = distribute.is_chief(strategy)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    tf_keras.utils.set_random_seed(global_seed(config.seed))
    if config.deterministic:
        # NOTE: TensorFlow 2.21 has no public call that turns op determinism off again.
        tf.config.experimental.enable_op_determinism()
    try:
        with strategy.scope():
            model = build_model(config, info, steps_per_epoch)
        if config.strategy == "multi_worker":
            backend.require_tf_keras(model, "multi_worker")
        initial_epoch = 0
        if resume_checkpoint:
            initial_epoch = _restore_checkpoint(model, resume_checkpoint, paths)
        # The input starts at the epoch that model.fit starts at, so that every epoch sees the same
        # examples in the same order however often the run was interrupted.
        start_epoch = _backup_start_epoch(backup_checkpoint) if backup_checkpoint else initial_epoch
        if chief:
            files.write_json_atomic(paths.config, config.to_dict())

        # Train. BackupAndRestore moves the start to the epoch after its backup, if there is one.
        test_dataset = make_test_dataset(config, info)
        epoch_logger = EpochLogger(config.epochs, model.optimizer.learning_rate, history, paths.history if chief else None)
        # NOTE: ModelCheckpoint keeps one checkpoint per epoch and never prunes old ones.
        # TerminateOnNaN stops within the epoch; the guarded callbacks then skip that epoch's saves.
        # The backup comes after the checkpoint and the history: a process killed between them then
        # repeats the epoch on resume (and the history drops the repeated entry) instead of skipping
        # its checkpoint and history entry.
        callbacks = [
            tf_keras.callbacks.TerminateOnNaN(),
            GuardedModelCheckpoint(os.path.join(paths.checkpoints, CHECKPOINT_PATTERN), save_weights_only=True),
            tf_keras.callbacks.TensorBoard(paths.logs, update_freq="epoch", profile_batch=0),
            epoch_logger,
            GuardedBackupAndRestore(paths.backup),
            *extra_callbacks,
        ]
        if backup_checkpoint:
            logging.info("Resuming the interrupted run in %s from %s.", paths.model_dir, backup_checkpoint)
        if initial_epoch >= config.epochs:
            logging.info("The run in %s already has %d epochs, so there is nothing to train.", paths.model_dir, initial_epoch)
        else:
            model.fit(
                make_train_dataset(config, info, strategy, start_epoch, steps_per_epoch),
                epochs=config.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch,
                validation_data=test_dataset if config.validate else None,
                callbacks=callbacks,
                verbose="auto",
            )
        if epoch_logger.first_epoch is not None:
            initial_epoch = epoch_logger.first_epoch
        if epoch_logger.diverged_epoch is not None:
            raise_diverged(config, paths, epoch_logger.diverged_epoch)

        # Evaluate and save the final model, in float32 when it was trained under mixed precision.
        final_model = model
        if config.mixed_precision != "none":
            from keras_densenet.export.prepare import float32_copy  # Imports tfmot, so only when needed.

            final_model = float32_copy(model)
        metrics = evaluate.evaluate_model(final_model, test_dataset, info.num_classes)
        logging.info("Test metrics of %s: %s", paths.model_dir, json.dumps(metrics, sort_keys=True))
        _save_final_model(final_model, metrics, paths, chief)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)

    return TrainResult(
        model=model,
        config=config,
        history=epoch_logger.history,
        metrics=metrics,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps_per_epoch,
        paths=paths,
    )


def _prepare_model_dir(config, info, strategy, paths):
    """Resolve `config` against the run already in `model_dir`, if any, and find where to resume.

    A missing seed is taken from the saved run, so that a resumed run keeps its seed.

    Returns:
        `(resolved_config, history, backup_checkpoint, resume_checkpoint)`. `backup_checkpoint` is
        the `BackupAndRestore` state of an interrupted run. `resume_checkpoint` is the latest
        `ModelCheckpoint` file, used only when there is no backup. Either may be `None`.
    """
    saved_config = _read_saved_config(paths)
    if saved_config is not None and config.seed is None:
        config = dataclasses.replace(config, seed=saved_config.seed)
    config = config.resolve(info, strategy.num_replicas_in_sync)
    _check_resume_compatible(saved_config, config, paths)
    history = _read_history(paths)
    backup_checkpoint = _latest_checkpoint(os.path.join(paths.backup, "chief"), paths)
    resume_checkpoint = None if backup_checkpoint else _latest_checkpoint(paths.checkpoints, paths)
    for checkpoint in (backup_checkpoint, resume_checkpoint):
        if checkpoint:
            check_checkpoint_readable(checkpoint, paths)
    return config, history, backup_checkpoint, resume_checkpoint


def _save_final_model(model, metrics, paths, chief):
    if chief:
        with files.atomic_path(paths.model) as temporary:
            model.save(temporary, include_optimizer=False, save_format="h5")
        files.write_json_atomic(paths.evaluation, metrics)
        return
    # Every worker saves the model, because reading some variables can need all workers.
    # Workers other than the chief discard their copy.
    with tempfile.TemporaryDirectory(prefix="densenet-worker-") as folder:
        model.save(os.path.join(folder, "model.h5"), include_optimizer=False, save_format="h5")


def global_seed(seed):
    """Map a config seed to a global seed in [1, 2**31 - 2].

    TensorFlow 2.21 compares a global seed that is 0 modulo 2**31 - 1 with the op seed in Python,
    which fails for the tensor op seeds of `make_train_dataset`.
    """
    return 1 + seed % (2**31 - 2)


def build_model(config, info, steps_per_epoch):
    """Build and compile the resolved config's model; call it inside the strategy's scope.

    The optimizer follows Huang et al. (CVPR 2017): SGD with Nesterov momentum 0.9 on the `StepDecaySchedule`, with
    weight decay coupled into the loss by the builder's L2 regularizers rather than decoupled in the
    optimizer.

    Under `config.mixed_precision` this function sets the global tf_keras dtype policy while it builds
    and compiles the model, and restores the previous policy before it returns. The builder then
    keeps the `predictions` layer (softmax and loss) in float32, and under "mixed_float16" `compile`
    wraps the optimizer in a `tf_keras.mixed_precision.LossScaleOptimizer` with dynamic loss scaling.
    """
    previous_policy = tf_keras.mixed_precision.global_policy()
    if config.mixed_precision != "none":
        tf_keras.mixed_precision.set_global_policy(config.mixed_precision)
    try:
        model = keras_densenet.DenseNet(
            config.variant,
            input_shape=info.image_shape,
            classes=info.num_classes,
            dropout_rate=config.dropout_rate,
            weight_decay=config.weight_decay,
        )
        schedule = StepDecaySchedule(
            config.learning_rate,
            config.epochs * steps_per_epoch,
            boundary_fractions=config.decay_fractions,
            warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        )
        optimizer = tf_keras.optimizers.SGD(learning_rate=schedule, momentum=PAPER_MOMENTUM, nesterov=True)
        metrics = [tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if info.num_classes > 10:
            metrics.append(tf_keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy"))
        model.compile(
            optimizer=optimizer,
            loss=tf_keras.losses.SparseCategoricalCrossentropy(),
            metrics=metrics,
            steps_per_execution=config.steps_per_execution,
            jit_compile=config.jit_compile,
        )
    finally:
        tf_keras.mixed_precision.set_global_policy(previous_policy)
    return model


def count_steps_per_epoch(config, info):
    """Return the number of full global batches in the (possibly capped) training split.

    Raises:
        ValueError: if the training data has fewer examples than one global batch.
    """
    num_examples = info.num_train_examples
    if config.take_train is not None:
        num_examples = min(num_examples, config.take_train)
    steps = num_examples // config.batch_size
    if steps < 1:
        raise ValueError(
            f"`batch_size` must not exceed the number of training examples ({num_examples}); lower it "
            f"or raise `take_train`. Received: batch_size={config.batch_size}"
        )
    return steps


def make_train_dataset(config, info, strategy, start_epoch=0, steps_per_epoch=None):
    """Return the training input of `model.fit` from epoch `start_epoch` (0-based) to `config.epochs`.

    Epoch `e` shuffles and augments with a seed derived from `config.seed` and `e` alone, so its
    batches do not depend on the epoch that the run started at. Each epoch yields exactly the
    `steps_per_epoch` steps that `model.fit` takes.

    Under any strategy other than the default one, `strategy.distribute_datasets_from_function`
    builds one pipeline per worker, which reads its shard of the examples and batches them by the
    per-replica batch size.
    """
    if steps_per_epoch is None:
        steps_per_epoch = count_steps_per_epoch(config, info)

    def dataset_fn(input_context=None):
        # A pipeline feeds (replicas per worker) batches per step.
        batches_per_step = 1
        if input_context is not None:
            batches_per_step = input_context.num_replicas_in_sync // input_context.num_input_pipelines

        def epoch_dataset(epoch):
            dataset = data.make_dataset(
                info,
                info.train_split,
                config.batch_size,
                training=True,
                augment=config.augment,
                seed=tf.constant(config.seed, tf.int64) + epoch * _EPOCH_SEED_STRIDE,
                input_context=input_context,
                data_dir=config.data_dir,
                manual_dir=config.manual_dir,
                drop_remainder=True,
                take=config.take_train,
            )
            return dataset.take(steps_per_epoch * batches_per_step)

        epochs = tf.data.Dataset.range(start_epoch, max(config.epochs, start_epoch + 1))
        # NOTE: the in-memory cache of make_dataset then lasts one epoch, so every epoch reads the files again.
        return epochs.flat_map(epoch_dataset).prefetch(tf.data.AUTOTUNE)

    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        return dataset_fn()
    return strategy.distribute_datasets_from_function(dataset_fn)


def make_test_dataset(config, info):
    """Return the test split in global batches, in a fixed order, sharded by example under multi-worker."""
    dataset = data.make_dataset(
        info,
        info.test_split,
        config.batch_size,
        training=False,
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class EpochLogger(tf_keras.callbacks.Callback):
    """Log every epoch with absl and keep the run's history, saving it after each epoch.

    Args:
        epochs: Total number of epochs, for the log lines.
        learning_rate: The optimizer's learning rate or schedule, recorded per epoch as `lr`.
        history: History of earlier runs (dict of per-epoch lists), extended in place.
        path: Where to write the history after every epoch; `None` writes nothing.
    """

    def __init__(self, epochs, learning_rate, history, path):
        super().__init__()
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.history = history
        self.path = path
        self.first_epoch = None
        self.diverged_epoch = None
        self._epoch_lr = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            # Drop epochs that a resumed run repeats: they ran after the checkpoint it resumes from.
            self.first_epoch = epoch
            keep = [i for i, done in enumerate(self.history.get("epoch", [])) if done <= epoch]
            for key in list(self.history):
                self.history[key] = [self.history[key][i] for i in keep if i < len(self.history[key])]
        self._epoch_lr = self._current_learning_rate()

    def on_epoch_end(self, epoch, logs=None):
        if not is_finite_loss(logs):
            self.diverged_epoch = epoch + 1
            logging.error("Epoch %d/%d: the loss is %s, so training stops.", epoch + 1, self.epochs, (logs or {}).get("loss"))
            return
        values = {"epoch": epoch + 1, "lr": self._epoch_lr}
        values.update({name: float(value) for name, value in (logs or {}).items()})
        for name, value in values.items():
            self.history.setdefault(name, []).append(value)
        summary = " ".join(f"{name}={value:.4g}" for name, value in sorted(values.items()) if name != "epoch")
        logging.info("Epoch %d/%d: %s", epoch + 1, self.epochs, summary)
        if self.path:
            files.write_json_atomic(self.path, self.history)

    def _current_learning_rate(self):
        if isinstance(self.learning_rate, tf_keras.optimizers.schedules.LearningRateSchedule):
            return float(self.learning_rate(self.model.optimizer.iterations))
        return float(tf_keras.backend.get_value(self.learning_rate))


def is_finite_loss(logs):
    """Return whether `logs` has no loss, or a finite one."""
    loss = (logs or {}).get("loss")
    return loss is None or bool(np.isfinite(loss))


class GuardedBackupAndRestore(tf_keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that does not back up an epoch whose loss is NaN or infinite."""

    diverged = False

    def on_epoch_end(self, epoch, logs=None):
        if is_finite_loss(logs):
            super().on_epoch_end(epoch, logs)
        else:
            self.diverged = True

    def on_train_end(self, logs=None):
        # Keep the backup of the last good epoch when the loss diverged.
        if not self.diverged:
            super().on_train_end(logs)


class GuardedModelCheckpoint(tf_keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` that does not save an epoch whose loss is NaN or infinite."""

    def on_epoch_end(self, epoch, logs=None):
        if is_finite_loss(logs):
            super().on_epoch_end(epoch, logs)


def raise_diverged(config, paths, epoch):
    """Raise the ValueError of a run whose loss became NaN or infinite in `epoch` (1-based)."""
    last_good = tf.train.latest_checkpoint(paths.checkpoints)
    raise ValueError(
        f"The training loss became NaN or infinite in epoch {epoch}, so training stopped; the last good "
        f"checkpoint is {last_good or 'none (no epoch finished)'} and no model.h5 was written. Lower "
        f"`learning_rate`, add warmup (`warmup_epochs`), or use mixed_precision='none', then run again in "
        f"the same `model_dir` to resume from that checkpoint. Received: learning_rate={config.learning_rate}"
    )


def _backup_start_epoch(prefix):
    """Return the 0-based epoch at which `model.fit` resumes from the `BackupAndRestore` state `prefix`."""
    return int(tf.train.load_checkpoint(prefix).get_tensor(_BACKUP_EPOCH_KEY)) + 1


def check_checkpoint_readable(prefix, paths):
    """Read every tensor of the checkpoint `prefix`, so that corrupt files fail before training starts.

    Raises:
        ValueError: naming the checkpoint and the fix, if a file is missing, truncated or fails its
            checksum.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"The checkpoint {prefix} is corrupt ({reason}). Delete {os.path.dirname(prefix)} and run again, "
            f"or train in a new `model_dir`. Received: model_dir={paths.model_dir!r}"
        ) from None


def _latest_checkpoint(folder, paths):
    if not os.path.isdir(folder):
        return None
    latest = tf.train.latest_checkpoint(folder)
    # TensorFlow ignores an unreadable `checkpoint` index file and returns None, which would
    # silently restart training although checkpoints exist.
    if latest is None and glob.glob(os.path.join(folder, "*.index")):
        raise ValueError(
            f"The checkpoint index {os.path.join(folder, 'checkpoint')} is missing or corrupt, so the latest "
            f"checkpoint in {folder} is unknown. Delete {folder}, or train in a new `model_dir`. "
            f"Received: model_dir={paths.model_dir!r}"
        )
    return latest


def _restore_checkpoint(model, prefix, paths):
    """Load weights and optimizer state from a `ModelCheckpoint` file and return its epoch count."""
    match = _CHECKPOINT_NAME.search(os.path.basename(prefix))
    if not match:
        raise ValueError(
            f"The latest checkpoint {prefix} does not match the name {CHECKPOINT_PATTERN!r} that this "
            f"script writes. Delete {paths.checkpoints} or train in a new `model_dir`. "
            f"Received: model_dir={paths.model_dir!r}"
        )
    # Create the optimizer's slots first, so that the restore fills them immediately.
    model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(prefix).assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as error:
        raise ValueError(
            f"The checkpoint {prefix} does not fit the model ({str(error).splitlines()[0]}). Train in a new "
            f"`model_dir`. Received: model_dir={paths.model_dir!r}"
        ) from None
    epoch = int(match.group(1))
    logging.info("Resumed from %s after epoch %d.", prefix, epoch)
    return epoch


def _read_saved_config(paths):
    if not os.path.exists(paths.config):
        return None
    try:
        with open(paths.config, encoding="utf-8") as f:
            return TrainConfig.from_json(f.read())
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{paths.config} is not a training config written by densenet-train ({error}). Train in a new "
            f"`model_dir`. Received: model_dir={paths.model_dir!r}"
        ) from None


def _check_resume_compatible(saved_config, config, paths):
    if saved_config is None:
        return
    conflict = find_resume_conflict(saved_config, config)
    if conflict is not None:
        name, saved_value, requested_value = conflict
        raise ValueError(
            f"`{name}` differs from the run saved in {paths.model_dir} ({name}={saved_value!r}), whose "
            f"weights belong to it. Keep {name}={saved_value!r} to resume, or train in a new `model_dir`. "
            f"Received: {name}={requested_value!r}"
        )


def _read_history(paths):
    if not os.path.exists(paths.history):
        return {}
    try:
        with open(paths.history, encoding="utf-8") as f:
            history = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{paths.history} is not valid JSON ({error}). Delete it to start a new history, or train in a "
            f"new `model_dir`. Received: model_dir={paths.model_dir!r}"
        ) from None
    if not isinstance(history, dict) or not all(isinstance(values, list) for values in history.values()):
        raise ValueError(
            f"{paths.history} must be a JSON object of per-epoch lists. Delete it to start a new history. "
            f"Received: model_dir={paths.model_dir!r}"
        )
    return history

