"""Numerical parity with keras.applications (Keras 3) and tf_keras.applications DenseNets."""

import keras
import numpy as np
import pytest
import tf_keras

import keras_densenet

APPLICATIONS = {
    "tf_keras": (tf_keras, {"densenet121": tf_keras.applications.DenseNet121,
                            "densenet169": tf_keras.applications.DenseNet169,
                            "densenet201": tf_keras.applications.DenseNet201}),
    "keras3": (keras, {"densenet121": keras.applications.DenseNet121,
                       "densenet169": keras.applications.DenseNet169,
                       "densenet201": keras.applications.DenseNet201}),
}


def randomize_statistics(model, seed):
    """Give every BN layer and the classifier bias non-trivial values, so that a wrong mapping shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape),
                rng.normal(0, 0.1, beta.shape),
                rng.normal(0, 0.1, mean.shape),
                rng.uniform(0.5, 1.5, variance.shape),
            ])
        elif kind == "Dense":
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.5, bias.shape)])


def compare(source, variant, height, width, include_top, pooling):
    module, constructors = APPLICATIONS[source]
    kwargs = dict(weights=None, include_top=include_top, input_shape=(height, width, 3), pooling=pooling)
    reference = constructors[variant](**kwargs)
    randomize_statistics(reference, seed=height + width)
    ours = keras_densenet.DenseNet(variant, **kwargs)
    keras_densenet.transfer_weights(reference, ours)

    images = np.random.default_rng(7).uniform(-2, 2, (2, height, width, 3)).astype("float32")
    expected = np.asarray(reference(images, training=False))
    actual = np.asarray(ours(images, training=False))
    assert actual.shape == expected.shape
    # A constant output would make the comparison prove nothing. Softmax outputs over 1000 classes
    # are small, so the spread is measured relative to their mean size.
    assert np.std(expected) > 0.1 * np.mean(np.abs(expected))
    return np.max(np.abs(actual - expected))


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted(APPLICATIONS))
@pytest.mark.parametrize("height, width", [(224, 224), (200, 160)])
@pytest.mark.parametrize("include_top, pooling", [(True, None), (False, "avg"), (False, "max")])
def test_densenet121_matches_applications(source, height, width, include_top, pooling):
    assert compare(source, "densenet121", height, width, include_top, pooling) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("source, variant", [("keras3", "densenet169"), ("tf_keras", "densenet201")])
def test_deeper_variants_match_applications(source, variant):
    assert compare(source, variant, 200, 160, False, "avg") <= 1e-5


def test_feature_map_matches_applications():
    assert compare("tf_keras", "densenet121", 64, 48, False, None) <= 1e-5


def test_preprocess_input_matches_keras():
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 5, 4, 3)).astype("float32")
    expected = keras.applications.densenet.preprocess_input(pixels.copy())
    np.testing.assert_allclose(keras_densenet.preprocess_input(pixels), expected, atol=1e-6, rtol=0)
    tensor_result = keras_densenet.preprocess_input(keras.ops.convert_to_tensor(pixels))
    np.testing.assert_allclose(np.asarray(tensor_result), expected, atol=1e-6, rtol=0)


def test_preprocess_input_keeps_argument():
    pixels = np.full((1, 2, 2, 3), 128.0, dtype="float32")
    keras_densenet.preprocess_input(pixels)
    assert np.all(pixels == 128.0)


@pytest.mark.parametrize("module", [tf_keras, keras], ids=["tf_keras", "keras3"])
def test_preprocessing_layers_match_function(module):
    model = keras_densenet.DenseNet(
        "densenet_bc22_k8", include_top=False, input_shape=(8, 8, 3), include_preprocessing=True, keras_module=module
    )
    names = [layer.name for layer in model.layers]
    assert names[1:3] == ["rescaling", "normalization"]
    prefix = module.Model(model.inputs, model.get_layer("normalization").output)
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = keras.applications.densenet.preprocess_input(pixels.copy())
    np.testing.assert_allclose(np.asarray(prefix(pixels)), expected, atol=1e-5, rtol=0)


def test_preprocess_input_rejects_grayscale():
    with pytest.raises(ValueError, match=r"must have 3 channels.*Received: x.shape=\(2, 4, 4, 1\)"):
        keras_densenet.preprocess_input(np.zeros((2, 4, 4, 1), "float32"))
