"""Memory-efficient dense layers: same outputs, gradients and BN updates as the standard model."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import keras_densenet
from keras_densenet.model import weights as weight_files

SHAPE = (8, 8, 3)


def paired_models(module, variant="densenet_bc22_k8", **kwargs):
    """Build a standard and a memory-efficient model with the same random weights and BN statistics."""
    standard = keras_densenet.DenseNet(variant, input_shape=SHAPE, classes=5, keras_module=module, **kwargs)
    efficient = keras_densenet.DenseNet(
        variant, input_shape=SHAPE, classes=5, keras_module=module, memory_efficient=True, **kwargs
    )
    rng = np.random.default_rng(0)
    for layer in weight_files.weight_layers(standard).values():
        layer.set_weights([
            rng.uniform(0.5, 1.5, w.shape) if "variance" in w.name else rng.normal(0, 0.3, w.shape)
            for w in layer.weights
        ])
    keras_densenet.transfer_weights(standard, efficient)
    return standard, efficient


def gradients_by_name(model, images, labels):
    owner = {}
    for name, layer in weight_files.weight_layers(model).items():
        for index, weight in enumerate(layer.weights):
            owner[id(weight)] = f"{name}/{index}"
    with tf.GradientTape() as tape:
        probabilities = model(images, training=True)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(labels, probabilities))
    grads = tape.gradient(loss, model.trainable_weights)
    return {owner[id(v)]: np.asarray(g) for v, g in zip(model.trainable_weights, grads)}


def batch():
    rng = np.random.default_rng(1)
    return rng.normal(0, 1, (4,) + SHAPE).astype("float32"), np.array([0, 1, 2, 3])


@pytest.mark.parametrize("module", [tf_keras, keras], ids=["tf_keras", "keras3"])
@pytest.mark.parametrize("variant", ["densenet_bc22_k8", "densenet40_k12"])
def test_outputs_and_gradients_match(module, variant):
    standard, efficient = paired_models(module, variant)
    images, labels = batch()
    for training in (False, True):
        expected = np.asarray(standard(images, training=training))
        np.testing.assert_allclose(np.asarray(efficient(images, training=training)), expected, atol=1e-5, rtol=0)
    expected = gradients_by_name(standard, images, labels)
    actual = gradients_by_name(efficient, images, labels)
    assert sorted(actual) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("module", [tf_keras, keras], ids=["tf_keras", "keras3"])
def test_fit_step_updates_match(module):
    standard, efficient = paired_models(module, dropout_rate=0.0, weight_decay=1e-3)
    images, labels = batch()
    for model in (standard, efficient):
        model.compile(optimizer=module.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        model.fit(images, labels, batch_size=4, epochs=1, verbose=0, shuffle=False)
    before = weight_files.weight_layers(standard)
    after = weight_files.weight_layers(efficient)
    for name, layer in before.items():
        for expected, actual in zip(layer.get_weights(), after[name].get_weights()):
            np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0, err_msg=name)


def test_regularization_losses_match():
    standard, efficient = paired_models(tf_keras, weight_decay=1e-3)
    assert len(efficient.losses) == len(standard.losses)
    np.testing.assert_allclose(float(tf.add_n(efficient.losses)), float(tf.add_n(standard.losses)), rtol=1e-5)


def test_only_block_outputs_are_concatenated():
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=SHAPE, memory_efficient=True)
    concats = [layer.name for layer in model.layers if type(layer).__name__ == "Concatenate"]
    assert concats == ["conv2_block3_concat", "conv3_block3_concat", "conv4_block3_concat"]
    wrapper = model.get_layer("conv2_block1_recompute")
    assert sorted(wrapper.named_sublayers()) == ["conv2_block1_0_bn", "conv2_block1_1_conv"]


def test_standard_layer_check_rejects_wrappers():
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=SHAPE, memory_efficient=True)
    with pytest.raises(ValueError, match=r"QAT needs the standard layers.*memory_efficient=False.*Received: model="):
        keras_densenet.require_standard_layers(model, "QAT")
    keras_densenet.require_standard_layers(keras_densenet.DenseNet("densenet_bc22_k8", input_shape=SHAPE), "QAT")
