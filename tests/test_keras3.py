"""Keras 3 models from the same builder: weight transfer both ways, training, LiteRT export, tf_keras-only errors."""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import keras_densenet


def random_tf_keras(variant, shape, **kwargs):
    model = keras_densenet.DenseNet(variant, input_shape=shape, **kwargs)
    rng = np.random.default_rng(0)
    model.set_weights([
        rng.uniform(0.5, 1.5, w.shape) if "moving_variance" in w.name else rng.normal(0, 0.2, w.shape)
        for w in model.weights
    ])
    return model


@pytest.mark.parametrize("variant, shape", [("densenet_bc22_k8", (8, 8, 3)), ("densenet121", (64, 48, 3))])
def test_weights_transfer_both_ways(variant, shape):
    source = random_tf_keras(variant, shape, classes=7)
    converted = keras_densenet.DenseNet(variant, input_shape=shape, classes=7, keras_module=keras)
    keras_densenet.transfer_weights(source, converted)
    images = np.random.default_rng(1).uniform(-2, 2, (2,) + shape).astype("float32")
    expected = source(images, training=False).numpy()
    np.testing.assert_allclose(np.asarray(converted(images, training=False)), expected, atol=1e-5, rtol=0)

    back = keras_densenet.DenseNet(variant, input_shape=shape, classes=7)
    keras_densenet.transfer_weights(converted, back)
    np.testing.assert_allclose(back(images, training=False).numpy(), expected, atol=1e-5, rtol=0)


def test_transfer_rejects_other_classes():
    source = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 3), classes=7)
    target = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 3), classes=5, keras_module=keras)
    with pytest.raises(ValueError, match=r"Layer 'predictions' has weight shapes .*same classes.*Received: source="):
        keras_densenet.transfer_weights(source, target)


@pytest.mark.slow
def test_fit_and_litert_export(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.normal(0, 1, (64, 8, 8, 1)).astype("float32")
    labels = (images.mean(axis=(1, 2, 3)) > 0).astype("int64")
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=2, keras_module=keras)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
    history = model.fit(images, labels, batch_size=16, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]

    path = str(tmp_path / "model.tflite")
    model.export(path, format="litert")
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    expected = np.asarray(model(images[:1], training=False))
    interpreter.set_tensor(input_detail["index"], images[:1])
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(output_detail["index"]), expected, atol=1e-5)


@pytest.mark.parametrize("feature, message", [("qat", r"quantization-aware training"), ("multi_worker", r"MultiWorkerMirroredStrategy")])
def test_tf_keras_only_features_rejected(feature, message):
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), keras_module=keras)
    with pytest.raises(ValueError, match=message + r".*tf_keras path.*keras_module=None.*Received: model="):
        keras_densenet.require_tf_keras(model, feature)
    keras_densenet.require_tf_keras(keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1)), feature)


def test_unknown_feature_rejected():
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match=r"`feature` must be one of \['multi_worker', 'qat'\]. Received: feature='prune'"):
        keras_densenet.require_tf_keras(model, "prune")
