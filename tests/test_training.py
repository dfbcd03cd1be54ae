"""Tests of the training config, schedule, coupled L2, evaluation and resumable runs on digits."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from keras_densenet import data
from keras_densenet.training import config as config_lib
from keras_densenet.training import evaluate
from keras_densenet.training import train
from keras_densenet.training.config import TrainConfig
from keras_densenet.training.schedule import StepDecaySchedule

TINY = "densenet_bc22_k8"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def digits_info(data_dir):
    return data.get_dataset_info("digits", data_dir=data_dir)


def quick_config(model_dir, data_dir, **overrides):
    values = dict(
        model_dir=str(model_dir),
        variant=TINY,
        dataset="digits",
        data_dir=data_dir,
        epochs=2,
        batch_size=32,
        learning_rate=0.1,
        seed=1,
        validate=True,
    )
    values.update(overrides)
    return TrainConfig(**values)


# Schedule.


@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.1), (49, 0.1), (50, 0.01), (74, 0.01), (75, 0.001), (99, 0.001), (10_000, 0.001)],
)
def test_schedule_values_at_boundaries(step, expected):
    schedule = StepDecaySchedule(0.1, total_steps=100)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-6)


def test_schedule_boundaries_round_down():
    schedule = StepDecaySchedule(1.0, total_steps=10)  # boundaries 10 // 2 = 5 and 30 // 4 = 7
    values = [float(schedule(step)) for step in range(10)]
    assert values == pytest.approx([1.0] * 5 + [0.1] * 2 + [0.01] * 3, rel=1e-6)


def test_schedule_config_round_trip():
    schedule = StepDecaySchedule(0.05, total_steps=123, boundary_fractions=(0.25, 0.5), warmup_steps=4, name="lr")
    clone = StepDecaySchedule.from_config(schedule.get_config())
    assert clone.get_config() == {
        "initial_learning_rate": 0.05,
        "total_steps": 123,
        "boundary_fractions": [0.25, 0.5],
        "warmup_steps": 4,
        "name": "lr",
    }
    assert float(clone(100)) == pytest.approx(0.0005, rel=1e-6)
    assert float(clone(1)) == pytest.approx(0.05 * 2 / 4, rel=1e-6)


def test_schedule_imagenet_boundaries_at_thirds():
    schedule = StepDecaySchedule(0.1, total_steps=90, boundary_fractions=(1 / 3, 2 / 3))
    assert schedule.boundaries == (30, 60)
    values = [float(schedule(step)) for step in (0, 29, 30, 59, 60, 89)]
    assert values == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-6)


def test_schedule_warmup_ramps_linearly():
    schedule = StepDecaySchedule(0.4, total_steps=100, warmup_steps=4)
    values = [float(schedule(step)) for step in range(6)]
    assert values == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4], rel=1e-6)
    assert float(schedule(50)) == pytest.approx(0.04, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"boundary_fractions": (0.75, 0.5)}, "boundary_fractions"), ({"boundary_fractions": (0.5, 1.0)}, "boundary_fractions"), ({"warmup_steps": -1}, "warmup_steps")],
)
def test_schedule_rejects_bad_boundaries_and_warmup(kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}` must be.*Received: {name}="):
        StepDecaySchedule(0.1, total_steps=10, **kwargs)


@pytest.mark.parametrize("kwargs, name", [({"initial_learning_rate": 0.0}, "initial_learning_rate"), ({"total_steps": 0}, "total_steps")])
def test_schedule_rejects_non_positive(kwargs, name):
    arguments = {"initial_learning_rate": 0.1, "total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=rf"`{name}` must be (a )?positive.*Received: {name}="):
        StepDecaySchedule(**arguments)


# Config.


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("epochs", -3),
        ("batch_size", 0),
        ("learning_rate", 0.0),
        ("learning_rate", -0.1),
        ("learning_rate", float("nan")),
        ("weight_decay", -1e-4),
        ("dropout_rate", 1.0),
        ("dropout_rate", -0.1),
        ("take_train", 0),
        ("steps_per_execution", 0),
        ("strategy", "parameter_server"),
        ("tpu", ""),
        ("mixed_precision", "float16"),
        ("jit_compile", "yes"),
        ("deterministic", 1),
        ("recipe", "mnist"),
        ("warmup_epochs", -1.0),
        ("warmup_epochs", 300),
        ("decay_fractions", (0.75, 0.5)),
        ("decay_fractions", (0.5, 1.5)),
        ("lr_reference_batch_size", 0),
        ("cluster_timeout", 0),
        ("seed", -1),
        ("augment", "yes"),
        ("variant", "densenet_nope"),
        ("dataset", ""),
        ("model_dir", ""),
    ],
)
def test_config_rejects_invalid_field(field, value):
    config = dataclasses.replace(TrainConfig(model_dir="/tmp/unused"), **{field: value})
    with pytest.raises(ValueError, match=rf"`{field}`.*Received: {field}="):
        config.validate_fields()


def test_config_rejects_batch_not_divisible(digits_info):
    config = TrainConfig(model_dir="/tmp/unused", batch_size=3)
    with pytest.raises(ValueError, match=r"`batch_size` must be a multiple of the number of replicas \(2\).*Received: batch_size=3"):
        config.resolve(digits_info, num_replicas=2)


def test_config_resolves_dropout_by_augmentation(digits_info):
    base = TrainConfig(model_dir="/tmp/unused", seed=5)
    augmented_info = dataclasses.replace(digits_info, augment_by_default=True)

    plain = base.resolve(digits_info, num_replicas=1)
    assert digits_info.augment_by_default is False
    assert plain.augment is False
    assert plain.dropout_rate == 0.2

    augmented = base.resolve(augmented_info, num_replicas=1)
    assert augmented.augment is True
    assert augmented.dropout_rate == 0.0

    forced = dataclasses.replace(base, augment=True).resolve(digits_info, num_replicas=1)
    assert forced.dropout_rate == 0.0
    explicit = dataclasses.replace(base, dropout_rate=0.3).resolve(digits_info, num_replicas=1)
    assert explicit.dropout_rate == 0.3
    assert plain.seed == 5


@pytest.mark.parametrize("batch_size, reference, expected", [(64, 64, 0.1), (256, 64, 0.4), (32, 64, 0.05), (256, 256, 0.1), (1024, 256, 0.4)])
def test_config_scales_learning_rate_linearly(digits_info, batch_size, reference, expected):
    config = TrainConfig(model_dir="/tmp/unused", batch_size=batch_size, lr_reference_batch_size=reference, seed=0)
    assert config.learning_rate is None
    assert config.resolve(digits_info, num_replicas=1).learning_rate == pytest.approx(expected)


def test_config_keeps_explicit_learning_rate(digits_info):
    config = TrainConfig(model_dir="/tmp/unused", batch_size=256, learning_rate=0.1, seed=0)
    assert config.resolve(digits_info, num_replicas=1).learning_rate == 0.1


def test_config_resolves_default_strategy_alias(digits_info):
    config = TrainConfig(model_dir="/tmp/unused", strategy="default", seed=0)
    assert config.resolve(digits_info, num_replicas=1).strategy == "one_device"


def test_recipe_cifar_matches_paper():
    config = TrainConfig.from_recipe("cifar", "/tmp/run")
    assert (config.dataset, config.epochs, config.batch_size, config.augment) == ("cifar10", 300, 64, True)
    assert config.decay_fractions == (0.5, 0.75)
    assert config.recipe == "cifar"
    schedule = StepDecaySchedule(0.1, total_steps=300, boundary_fractions=config.decay_fractions)
    assert schedule.boundaries == (150, 225)  # epochs, with one step per epoch


def test_recipe_imagenet_matches_paper(digits_info):
    config = TrainConfig.from_recipe("imagenet", "/tmp/run")
    assert (config.dataset, config.variant, config.epochs, config.batch_size) == ("imagenet2012", "densenet121", 90, 256)
    schedule = StepDecaySchedule(0.1, total_steps=90, boundary_fractions=config.decay_fractions)
    assert schedule.boundaries == (30, 60)
    resolved = dataclasses.replace(config, dataset="digits").resolve(digits_info, num_replicas=1)
    assert resolved.learning_rate == pytest.approx(0.1)


def test_recipe_overrides_win():
    config = TrainConfig.from_recipe("cifar", "/tmp/run", epochs=40, batch_size=128)
    assert (config.epochs, config.batch_size, config.dataset) == (40, 128, "cifar10")


def test_recipe_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"`recipe` must be one of \('none', 'cifar', 'imagenet'\). Received: recipe='mnist'"):
        TrainConfig.from_recipe("mnist", "/tmp/run")


def test_config_resolve_draws_missing_seed(digits_info):
    resolved = TrainConfig(model_dir="/tmp/unused").resolve(digits_info, num_replicas=1)
    assert isinstance(resolved.seed, int)
    assert 0 <= resolved.seed < 2**31


def test_config_json_round_trip(digits_info):
    config = TrainConfig(model_dir="/tmp/run", take_train=100, seed=3, decay_fractions=(1 / 3, 2 / 3)).resolve(digits_info, num_replicas=1)
    assert TrainConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["dropout_rate"] == 0.2


def test_config_from_json_rejects_unknown_field():
    with pytest.raises(ValueError, match=r"Unknown `TrainConfig` fields \['colour'\]"):
        TrainConfig.from_json('{"model_dir": "/tmp/x", "colour": "red"}')


# Model and optimizer.


def test_coupled_l2_equals_half_decay_times_squares(digits_info):
    config = quick_config("/tmp/unused", None, weight_decay=1e-3).resolve(digits_info, num_replicas=1)
    model = train.build_model(config, digits_info, steps_per_epoch=10)
    squares = sum(float(np.sum(np.square(w.numpy()))) for w in model.trainable_weights)
    penalty = float(tf.add_n(model.losses))
    assert len(model.losses) == len(model.trainable_weights)
    assert penalty == pytest.approx(1e-3 / 2 * squares, rel=1e-5)


def test_optimizer_is_nesterov_sgd(digits_info):
    config = quick_config("/tmp/unused", None).resolve(digits_info, num_replicas=1)
    model = train.build_model(config, digits_info, steps_per_epoch=10)
    optimizer = model.optimizer
    assert isinstance(optimizer, tf_keras.optimizers.SGD)
    assert optimizer.nesterov is True
    assert optimizer.momentum == pytest.approx(0.9)
    assert optimizer.weight_decay is None
    assert isinstance(optimizer._learning_rate, StepDecaySchedule)
    assert optimizer._learning_rate.total_steps == config.epochs * 10


def test_steps_per_epoch_rejects_batch_above_examples(digits_info):
    config = quick_config("/tmp/unused", None, take_train=20, batch_size=32)  # digits has 1437 training examples
    with pytest.raises(ValueError, match=r"`batch_size` must not exceed the number of training examples \(20\).*Received: batch_size=32"):
        train.count_steps_per_epoch(config, digits_info)


# Evaluation.


def test_top_k_accuracy_against_sorting():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 12))
    labels = rng.integers(0, 12, size=200)
    ranking = np.argsort(-scores, axis=1)
    for k in (1, 3, 5):
        expected = np.mean([label in row[:k] for row, label in zip(ranking, labels)])
        assert evaluate.top_k_accuracy(scores, labels, k) == pytest.approx(expected)


def test_top_k_accuracy_counts_ties_as_correct():
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    assert evaluate.top_k_accuracy(scores, np.array([1, 2]), 1) == 1.0


def test_top_k_accuracy_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 3\)"):
        evaluate.top_k_accuracy(np.zeros((2, 3)), np.array([0, 3]), 1)


def identity_model(num_classes):
    inputs = tf_keras.Input(shape=(num_classes,))
    outputs = tf_keras.layers.Activation("linear")(inputs)
    return tf_keras.Model(inputs, outputs)


@pytest.mark.parametrize("num_classes, has_top5", [(10, False), (12, True)])
def test_evaluate_model_matches_numpy(num_classes, has_top5):
    rng = np.random.default_rng(num_classes)
    scores = rng.normal(size=(50, num_classes)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=50)
    labels[:20] = np.argmax(scores[:20], axis=1)  # 20 certain hits, so top-1 is well above chance
    dataset = tf.data.Dataset.from_tensor_slices((scores, labels)).batch(16)

    metrics = evaluate.evaluate_model(identity_model(num_classes), dataset, num_classes)

    ranking = np.argsort(-scores, axis=1)
    assert metrics["num_examples"] == 50
    assert metrics["top1"] == pytest.approx(np.mean(ranking[:, 0] == labels))
    assert ("top5" in metrics) is has_top5
    if has_top5:
        assert metrics["top5"] == pytest.approx(np.mean([label in row[:5] for row, label in zip(ranking, labels)]))


def test_evaluate_model_rejects_wrong_class_count():
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((4, 3), np.float32), np.zeros(4, np.int64))).batch(2)
    with pytest.raises(ValueError, match=r"outputs 3 scores per image, but `num_classes` is 10.*Received: num_classes=10"):
        evaluate.evaluate_model(identity_model(3), dataset, 10)


def test_load_trained_model_rejects_missing_dir(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=r"`model_dir` does not exist; run densenet-train.*Received: model_dir="):
        evaluate.load_trained_model(missing)


def test_load_trained_model_rejects_empty_dir(tmp_path):
    with pytest.raises(ValueError, match=r"model.h5 not found.*run densenet-train"):
        evaluate.load_trained_model(tmp_path)


def test_load_trained_model_rejects_corrupt_file(tmp_path):
    (tmp_path / "model.h5").write_bytes(b"not an HDF5 file")
    with pytest.raises(ValueError, match=r"model.h5 is not a readable tf_keras HDF5 model.*densenet-train"):
        evaluate.load_trained_model(tmp_path)


# Runs on digits.


class StopAtBatch(tf_keras.callbacks.Callback):
    """Raise at `batch` of `epoch` (both 0-based) to simulate a killed run."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.stop_epoch = epoch
        self.stop_batch = batch
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == self.stop_epoch and batch == self.stop_batch:
            raise KeyboardInterrupt("simulated interruption")


class EpochRecorder(tf_keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir):
    model_dir = tmp_path_factory.mktemp("run") / "model"
    return train.run(quick_config(model_dir, data_dir))


def test_run_learns_digits(trained_run):
    history = trained_run.history
    assert history["epoch"] == [1, 2]
    assert history["loss"][1] < history["loss"][0]
    assert trained_run.metrics["top1"] > 0.3  # chance is 0.1
    assert trained_run.metrics["num_examples"] == 360
    assert "top5" not in trained_run.metrics
    assert trained_run.steps_per_epoch == 1437 // 32
    assert trained_run.initial_epoch == 0
    assert history["lr"] == pytest.approx([0.1, 0.1])


def test_run_writes_outputs(trained_run):
    paths = trained_run.paths
    for path in (paths.config, paths.history, paths.model, paths.evaluation):
        assert os.path.isfile(path), path
    assert tf.train.latest_checkpoint(paths.checkpoints).endswith("epoch-0002")
    assert os.listdir(paths.logs)
    # BackupAndRestore deletes its state (backup/chief) when a run finishes.
    assert not os.path.exists(os.path.join(paths.backup, "chief"))
    leftovers = [name for name in os.listdir(paths.model_dir) if ".tmp" in name]
    assert leftovers == []


def test_run_saves_resolved_config(trained_run):
    with open(trained_run.paths.config) as f:
        saved = json.load(f)
    assert saved == trained_run.config.to_dict()
    assert saved["dropout_rate"] == 0.2
    assert saved["augment"] is False


def test_run_saves_history_and_metrics(trained_run):
    with open(trained_run.paths.history) as f:
        saved = json.load(f)
    assert sorted(saved) == sorted(trained_run.history)
    for key, values in trained_run.history.items():
        assert saved[key] == pytest.approx(values), key
    with open(trained_run.paths.evaluation) as f:
        assert json.load(f) == trained_run.metrics
    assert set(trained_run.history) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"}


def test_saved_model_reproduces_metrics(trained_run, data_dir):
    metrics = evaluate.run(evaluate.EvaluateConfig(model_dir=trained_run.paths.model_dir, data_dir=data_dir))
    assert metrics == pytest.approx(trained_run.metrics)


def copy_run(trained_run, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(trained_run.paths.model_dir, model_dir)
    return str(model_dir)


def test_run_resumes_with_more_epochs(trained_run, tmp_path, data_dir):
    model_dir = copy_run(trained_run, tmp_path)
    recorder = EpochRecorder()
    result = train.run(quick_config(model_dir, data_dir, epochs=3), extra_callbacks=[recorder])
    assert recorder.epochs == [2]
    assert result.initial_epoch == 2
    assert result.history["epoch"] == [1, 2, 3]
    assert result.history["loss"][:2] == pytest.approx(trained_run.history["loss"])
    assert int(result.model.optimizer.iterations) == 3 * result.steps_per_epoch
    assert json.load(open(os.path.join(model_dir, "config.json")))["epochs"] == 3


def test_run_resumes_interrupted_from_backup(tmp_path, data_dir):
    model_dir = str(tmp_path / "model")
    config = quick_config(model_dir, data_dir, epochs=3, take_train=320, validate=False)
    with pytest.raises(KeyboardInterrupt):
        train.run(config, extra_callbacks=[StopAtBatch(epoch=1, batch=3)])
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "backup", "chief"))
    assert json.load(open(os.path.join(model_dir, "history.json")))["epoch"] == [1]
    # Without checkpoints only the BackupAndRestore state can tell where to resume.
    shutil.rmtree(os.path.join(model_dir, "checkpoints"))

    recorder = EpochRecorder()
    result = train.run(config, extra_callbacks=[recorder])
    assert recorder.epochs == [1, 2]
    assert result.initial_epoch == 1
    assert result.history["epoch"] == [1, 2, 3]
    assert not os.path.exists(os.path.join(model_dir, "backup", "chief"))


def test_run_without_work_keeps_model(trained_run, tmp_path, data_dir):
    model_dir = copy_run(trained_run, tmp_path)
    result = train.run(quick_config(model_dir, data_dir, epochs=2))
    assert result.initial_epoch == 2
    assert result.history["epoch"] == [1, 2]
    assert result.metrics == pytest.approx(trained_run.metrics)


def test_run_rejects_changed_architecture(trained_run, tmp_path, data_dir):
    model_dir = copy_run(trained_run, tmp_path)
    before = sorted(os.listdir(model_dir))
    with pytest.raises(ValueError, match=r"`variant` differs from the run saved in .*new `model_dir`.*Received: variant='densenet_bc40_k12'"):
        train.run(quick_config(model_dir, data_dir, variant="densenet_bc40_k12", epochs=3))
    assert sorted(os.listdir(model_dir)) == before


def test_run_rejects_corrupt_checkpoint(trained_run, tmp_path, data_dir):
    model_dir = copy_run(trained_run, tmp_path)
    prefix = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    data_file = prefix + ".data-00000-of-00001"
    content = bytearray(open(data_file, "rb").read())
    content[len(content) // 2] ^= 0xFF
    open(data_file, "wb").write(bytes(content))
    config_before = open(os.path.join(model_dir, "config.json")).read()

    with pytest.raises(ValueError, match=r"The checkpoint .*epoch-0002 is corrupt.*Received: model_dir="):
        train.run(quick_config(model_dir, data_dir, epochs=3))
    assert open(os.path.join(model_dir, "config.json")).read() == config_before


def test_run_rejects_corrupt_checkpoint_index(trained_run, tmp_path, data_dir):
    model_dir = copy_run(trained_run, tmp_path)
    with open(os.path.join(model_dir, "checkpoints", "checkpoint"), "w") as f:
        f.write("not a checkpoint state {{")
    with pytest.raises(ValueError, match=r"The checkpoint index .*checkpoint is missing or corrupt.*Received: model_dir="):
        train.run(quick_config(model_dir, data_dir, epochs=3))


def test_run_rejects_bad_config_before_writing(tmp_path, data_dir):
    model_dir = tmp_path / "model"
    with pytest.raises(ValueError, match=r"`epochs` must be a positive integer. Received: epochs=0"):
        train.run(quick_config(model_dir, data_dir, epochs=0))
    with pytest.raises(ValueError, match=r"Received: dataset='nope'"):
        train.run(quick_config(model_dir, data_dir, dataset="nope"))
    assert not model_dir.exists()
