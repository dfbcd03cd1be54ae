"""Tests of mixed precision, the float32 copy for export, and XLA compilation of the training step."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from keras_densenet import data
from keras_densenet.export import prepare as export_prepare
from keras_densenet.training import evaluate
from keras_densenet.training import train
from keras_densenet.training.config import TrainConfig

TINY = "densenet_bc22_k8"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def digits_info(data_dir):
    return data.get_dataset_info("digits", data_dir=data_dir)


def quick_config(model_dir, data_dir, **overrides):
    values = dict(model_dir=str(model_dir), variant=TINY, data_dir=data_dir, epochs=1, batch_size=32,
                  take_train=96, seed=4, validate=False)
    values.update(overrides)
    return TrainConfig(**values)


def build(digits_info, **overrides):
    config = quick_config("/tmp/unused", None, **overrides).resolve(digits_info, num_replicas=1)
    return train.build_model(config, digits_info, steps_per_epoch=3)


@pytest.mark.parametrize("policy, compute_dtype", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")])
def test_mixed_model_keeps_float32_head(digits_info, policy, compute_dtype):
    model = build(digits_info, mixed_precision=policy)
    assert model.get_layer("conv1_conv").compute_dtype == compute_dtype
    assert model.get_layer("conv1_conv").variable_dtype == "float32"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model.output.dtype == tf.float32
    assert model(np.zeros((2, 8, 8, 1), np.float32)).dtype == tf.float32
    assert tf_keras.mixed_precision.global_policy().name == "float32"


def test_mixed_float16_uses_loss_scaling(digits_info):
    model = build(digits_info, mixed_precision="mixed_float16")
    assert isinstance(model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    assert model.optimizer.dynamic is True
    assert isinstance(model.optimizer.inner_optimizer, tf_keras.optimizers.SGD)


def test_mixed_bfloat16_has_no_loss_scaling(digits_info):
    model = build(digits_info, mixed_precision="mixed_bfloat16")
    assert not isinstance(model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)


def test_float32_copy_matches_weights_and_outputs(digits_info):
    model = build(digits_info, mixed_precision="mixed_bfloat16")
    copy = export_prepare.float32_copy(model)
    assert all(layer.compute_dtype == "float32" for layer in copy.layers)
    for original, copied in zip(model.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(original, copied)
    images = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)
    mixed = model(images, training=False).numpy()
    exact = copy(images, training=False).numpy()
    np.testing.assert_allclose(exact.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(mixed, exact, atol=0.05)  # bfloat16 keeps 8 bits of mantissa


def test_float32_copy_rejects_subclassed_model():
    class Subclassed(tf_keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(ValueError, match=r"`model` must be a functional tf_keras model.*Received: model=Subclassed"):
        export_prepare.float32_copy(Subclassed())


@pytest.mark.slow
def test_run_mixed_bfloat16_saves_float32_model(tmp_path, data_dir):
    result = train.run(quick_config(tmp_path / "model", data_dir, mixed_precision="mixed_bfloat16"))
    assert np.isfinite(result.history["loss"][0])
    assert result.steps_per_epoch == 3
    saved = evaluate.load_trained_model(result.paths.model_dir)
    assert all(layer.compute_dtype == "float32" for layer in saved.layers)
    for trained, loaded in zip(result.model.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(trained, loaded)
    metrics = evaluate.run(evaluate.EvaluateConfig(model_dir=result.paths.model_dir, data_dir=data_dir))
    assert metrics == pytest.approx(result.metrics)
    assert tf_keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_run_with_jit_compile(tmp_path, data_dir):
    result = train.run(quick_config(tmp_path / "model", data_dir, jit_compile=True))
    assert result.model._jit_compile is True
    assert len(result.history["loss"]) == 1
    assert np.isfinite(result.history["loss"][0])
    assert os.path.isfile(result.paths.model)
