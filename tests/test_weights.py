"""Loading keras.applications DenseNet weight files and the `weights="imagenet"` path, without a network."""

import time

import keras
import numpy as np
import pytest
import tf_keras

import keras_densenet
from keras_densenet.model import weights as weight_files

SHAPE = (64, 48, 3)


def randomized(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, variance.shape)])
    return model


@pytest.fixture(scope="module")
def tf_keras_notop_file(tmp_path_factory):
    """A tf_keras.applications DenseNet121 without the top, saved with the `conv1/conv` naming."""
    reference = randomized(tf_keras.applications.DenseNet121(weights=None, include_top=False, input_shape=SHAPE))
    path = str(tmp_path_factory.mktemp("weights") / "densenet121_notop.h5")
    reference.save_weights(path)
    return reference, path


@pytest.fixture(scope="module")
def keras3_top_file(tmp_path_factory):
    """A Keras 3 keras.applications DenseNet121 with the top, saved as a legacy `.h5` model (`conv1_conv`)."""
    reference = randomized(keras.applications.DenseNet121(weights=None, include_top=True, input_shape=SHAPE), seed=1)
    path = str(tmp_path_factory.mktemp("weights") / "densenet121_top.h5")
    reference.save(path)
    return reference, path


def images(seed=3):
    return np.random.default_rng(seed).uniform(-2, 2, (2,) + SHAPE).astype("float32")


def test_tf_keras_file_without_top_loads(tf_keras_notop_file):
    reference, path = tf_keras_notop_file
    assert "conv1_conv" in weight_files.read_weight_file(path)
    ours = keras_densenet.DenseNet121(include_top=False, pooling="avg", input_shape=SHAPE, weights=path)
    expected = reference(images(), training=False).numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(ours(images(), training=False).numpy(), expected, atol=1e-5, rtol=0)


def test_keras3_file_with_top_loads(keras3_top_file):
    reference, path = keras3_top_file
    ours = keras_densenet.DenseNet121(input_shape=SHAPE, weights=path)
    expected = np.asarray(reference(images(), training=False))
    np.testing.assert_allclose(ours(images(), training=False).numpy(), expected, atol=1e-5, rtol=0)


def test_file_with_top_loads_without_top(keras3_top_file):
    reference, path = keras3_top_file
    ours = keras_densenet.DenseNet121(include_top=False, input_shape=SHAPE, weights=path)
    np.testing.assert_array_equal(ours.get_layer("bn").get_weights()[2], reference.get_layer("bn").get_weights()[2])


def test_keras3_model_loads_file(tf_keras_notop_file):
    reference, path = tf_keras_notop_file
    ours = keras_densenet.DenseNet121(include_top=False, input_shape=SHAPE, weights=path, keras_module=keras)
    expected = reference(images(), training=False).numpy()
    np.testing.assert_allclose(np.asarray(ours(images(), training=False)), expected, atol=1e-5, rtol=0)


def test_file_without_top_rejected_for_top(tf_keras_notop_file):
    _, path = tf_keras_notop_file
    with pytest.raises(ValueError, match=r"no classifier layer `predictions`.*include_top=False.*Received: weights="):
        keras_densenet.DenseNet121(input_shape=SHAPE, weights=path)


def test_other_variant_file_rejected(tf_keras_notop_file):
    _, path = tf_keras_notop_file
    with pytest.raises(ValueError, match=r"does not match densenet169.*\(6, 12, 24, 16\) are those of 'densenet121'"):
        keras_densenet.DenseNet169(include_top=False, input_shape=SHAPE, weights=path)


def test_wrong_channel_count_rejected(tf_keras_notop_file):
    _, path = tf_keras_notop_file
    with pytest.raises(ValueError, match=r"layer 'conv1_conv'.*expects 3-channel input.*Received: weights="):
        keras_densenet.DenseNet121(include_top=False, input_shape=(64, 48, 1), weights=path)


def test_wrong_class_count_rejected(keras3_top_file):
    _, path = keras3_top_file
    with pytest.raises(ValueError, match=r"classifier has 1000 classes; pass classes=1000"):
        keras_densenet.DenseNet121(input_shape=SHAPE, classes=10, weights=path)


def test_corrupt_file_rejected(tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(ValueError, match=r"not a readable HDF5 weights file.*Received: weights="):
        weight_files.load_weights_by_name(keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1)), path)


def test_truncated_file_rejected(tmp_path, tf_keras_notop_file):
    _, path = tf_keras_notop_file
    truncated = tmp_path / "truncated.h5"
    with open(path, "rb") as handle:
        truncated.write_bytes(handle.read(4096))
    with pytest.raises(ValueError, match=r"not a readable HDF5 weights file"):
        keras_densenet.DenseNet121(include_top=False, input_shape=SHAPE, weights=str(truncated))


def test_keras3_weights_format_rejected_by_name(tmp_path):
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), keras_module=keras)
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)
    with pytest.raises(ValueError, match=r"without the legacy Keras `layer_names` layout"):
        weight_files.read_weight_file(path)
    loaded = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), keras_module=keras, weights=path)
    for expected, actual in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(actual, expected)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Received: weights=.*absent.h5"):
        weight_files.read_weight_file(tmp_path / "absent.h5")


def test_imagenet_offline_names_cache_path(tmp_path):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as raised:
        weight_files.fetch_imagenet_weights("densenet121", include_top=False, cache_dir=str(tmp_path))
    assert time.monotonic() - start < 60
    message = str(raised.value)
    assert str(tmp_path / "models" / "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5") in message
    assert "https://storage.googleapis.com/tensorflow/keras-applications/densenet/" in message
    assert "\n" not in message


def test_imagenet_from_builder_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"copy it to .*densenet169_weights_tf_dim_ordering_tf_kernels.h5"):
        keras_densenet.DenseNet169(weights="imagenet")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="densenet121", classes=10), r"`classes` must be 1000 with weights='imagenet'.*Received: classes=10"),
        (dict(variant="densenet121", include_top=False, input_shape=(64, 64, 1)),
         r"need 3-channel \(RGB\) input.*Received: channels=1"),
        (dict(variant="densenet161"), r"exists only for \['densenet121', 'densenet169', 'densenet201'\].*Received: variant='densenet161'"),
    ],
)
def test_imagenet_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_densenet.DenseNet(weights="imagenet", **kwargs)
