"""Tests of the variant table and the builder: parameter counts, layer names, numerics, errors."""

import re

import numpy as np
import pytest
import tf_keras

import keras_densenet
from keras_densenet.model import specs

# Total parameters of keras.applications' models with the top and 1000 classes.
KERAS_APPLICATIONS_PARAMS = {
    "densenet121": 8_062_504,
    "densenet169": 14_307_880,
    "densenet201": 20_242_984,
}

# Trainable parameters with 10 classes, in millions, from Table 2 of Huang et al., "Densely Connected
# Convolutional Networks" (CVPR 2017).
PAPER_CIFAR_PARAMS_M = {
    "densenet40_k12": 1.0,
    "densenet100_k12": 7.0,
    "densenet100_k24": 27.2,
    "densenet_bc100_k12": 0.8,
    "densenet_bc250_k24": 15.3,
    "densenet_bc190_k40": 25.6,
}

LAYER_NAME_PATTERN = re.compile(
    r"^(input|conv1_(pad|conv|bn|relu)|pool1(_pad)?"
    r"|conv\d+_block\d+_(0_bn|0_relu|1_conv|1_bn|1_relu|1_drop|2_conv|2_drop|concat)"
    r"|pool\d+_(bn|relu|conv|drop|pool)|bn|relu|avg_pool|max_pool|predictions)$"
)


def count_params_by_formula(spec, classes, include_top=True):
    """Count parameters from the layer definitions of Huang et al. (CVPR 2017), independently of the builder.

    Each BatchNormalization has 4 parameters per channel (gamma, beta, moving mean and variance).
    """
    channels_in = 3  # RGB input
    kernel = 7 if spec.stem == specs.IMAGENET_STEM else 3
    total = kernel * kernel * channels_in * spec.initial_features
    if spec.stem == specs.IMAGENET_STEM:
        total += 4 * spec.initial_features
    channels = spec.initial_features
    k = spec.growth_rate
    for block_index, num_layers in enumerate(spec.blocks):
        for _ in range(num_layers):
            total += 4 * channels
            if spec.bottleneck:
                total += channels * 4 * k + 4 * (4 * k) + 9 * 4 * k * k
            else:
                total += 9 * channels * k
            channels += k
        if block_index != len(spec.blocks) - 1:
            out = int(channels * spec.compression)
            total += 4 * channels + channels * out
            channels = out
    total += 4 * channels
    if include_top:
        total += channels * classes + classes
    return total


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("variant", sorted(KERAS_APPLICATIONS_PARAMS))
def test_imagenet_params_match_keras_applications(variant):
    model = keras_densenet.DenseNet(variant)
    assert model.count_params() == KERAS_APPLICATIONS_PARAMS[variant]


@pytest.mark.parametrize("variant", ["densenet161", "densenet264"])
def test_imagenet_params_match_formula(variant):
    model = keras_densenet.DenseNet(variant)
    expected = count_params_by_formula(keras_densenet.get_spec(variant), classes=1000)
    assert model.count_params() == expected


@pytest.mark.parametrize("variant", sorted(PAPER_CIFAR_PARAMS_M))
def test_cifar_params_match_paper(variant):
    model = keras_densenet.DenseNet(variant, input_shape=(32, 32, 3), classes=10)
    assert round(trainable_params(model) / 1e6, 1) == PAPER_CIFAR_PARAMS_M[variant]
    assert model.count_params() == count_params_by_formula(keras_densenet.get_spec(variant), classes=10)


@pytest.mark.parametrize(
    "variant, depth",
    [
        ("densenet121", 121),
        ("densenet161", 161),
        # Table 1 of Huang et al. (CVPR 2017) gives DenseNet-264 blocks of (6, 12, 64, 48), which count 265 layers.
        # The variant keeps the table's blocks, because published weights use them.
        ("densenet264", 265),
        ("densenet40_k12", 40),
        ("densenet_bc190_k40", 190),
    ],
)
def test_spec_depth_matches_name(variant, depth):
    assert keras_densenet.get_spec(variant).depth == depth


def test_constructors_match_table():
    for constructor, variant in [
        (keras_densenet.DenseNet121, "densenet121"),
        (keras_densenet.DenseNet161, "densenet161"),
        (keras_densenet.DenseNet169, "densenet169"),
        (keras_densenet.DenseNet201, "densenet201"),
        (keras_densenet.DenseNet264, "densenet264"),
    ]:
        assert constructor.__name__.lower() == variant
        model = constructor(include_top=False, input_shape=(32, 32, 3))
        assert model.name == variant
        assert model.output_shape == (None, 1, 1, count_final_channels(variant))


def count_final_channels(variant):
    spec = keras_densenet.get_spec(variant)
    channels = spec.initial_features
    for index, num_layers in enumerate(spec.blocks):
        channels += num_layers * spec.growth_rate
        if index != len(spec.blocks) - 1:
            channels = int(channels * spec.compression)
    return channels


def test_layer_names_follow_scheme():
    model = keras_densenet.DenseNet("densenet121", dropout_rate=0.1)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    bad = [name for name in names if not LAYER_NAME_PATTERN.match(name)]
    assert not bad, f"layer names outside the scheme: {bad[:10]}"
    assert "conv2_block1_1_drop" in names
    assert "pool2_drop" in names


def test_weighted_layers_match_tf_keras_applications():
    ours = keras_densenet.DenseNet121(weights=None)
    reference = tf_keras.applications.DenseNet121(weights=None)

    def weight_shapes(model):
        return {
            layer.name.replace("/", "_"): [tuple(w.shape) for w in layer.weights]
            for layer in model.layers
            if layer.weights
        }

    assert weight_shapes(ours) == weight_shapes(reference)


def test_outputs_match_tf_keras_applications_with_copied_weights():
    reference = tf_keras.applications.DenseNet121(weights=None, include_top=False, input_shape=(64, 48, 3))
    rng = np.random.default_rng(0)
    for layer in reference.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.1, mean.shape),
                    rng.uniform(0.5, 1.5, variance.shape),
                ]
            )
    ours = keras_densenet.DenseNet121(include_top=False, input_shape=(64, 48, 3))
    by_name = {layer.name.replace("/", "_"): layer for layer in reference.layers}
    for layer in ours.layers:
        if layer.weights:
            layer.set_weights(by_name[layer.name].get_weights())

    images = rng.uniform(-1, 1, (2, 64, 48, 3)).astype("float32")
    expected = reference(images, training=False).numpy()
    actual = ours(images, training=False).numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_transition_compresses_channels():
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=10)
    concat = model.get_layer("conv2_block3_concat").output_shape[-1]
    assert concat == 16 + 3 * 8
    assert model.get_layer("pool2_conv").output_shape[-1] == concat // 2
    assert model.get_layer("pool2_pool").output_shape[1:3] == (4, 4)


def test_plain_densenet_keeps_channels():
    model = keras_densenet.DenseNet("densenet40_k12", input_shape=(32, 32, 3), classes=10)
    assert model.get_layer("conv2_block1_0_bn").input_shape[-1] == 16
    assert model.get_layer("pool2_conv").output_shape[-1] == 16 + 12 * 12
    assert "conv2_block1_1_conv" not in [layer.name for layer in model.layers]


def test_pooling_modes():
    images = np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 1)).astype("float32")
    features = keras_densenet.DenseNet("densenet_bc22_k8", include_top=False, input_shape=(8, 8, 1))
    feature_map = features(images, training=False).numpy()
    assert feature_map.shape == (2, 2, 2, count_final_channels("densenet_bc22_k8"))
    for pooling, reduce in [("avg", np.mean), ("max", np.max)]:
        model = keras_densenet.DenseNet("densenet_bc22_k8", include_top=False, pooling=pooling, input_shape=(8, 8, 1))
        model.set_weights(features.get_weights())
        np.testing.assert_allclose(model(images, training=False).numpy(), reduce(feature_map, axis=(1, 2)), atol=1e-6)


def test_classifier_activation_none_gives_logits():
    images = np.random.default_rng(2).uniform(-1, 1, (3, 8, 8, 1)).astype("float32")
    softmax = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=5)
    logits = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=5, classifier_activation=None)
    logits.set_weights(softmax.get_weights())
    probabilities = softmax(images, training=False).numpy()
    np.testing.assert_allclose(tf_keras.activations.softmax(logits(images, training=False)).numpy(), probabilities, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_weight_decay_is_coupled_l2_on_every_weight():
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=10, weight_decay=1e-4)
    for variable in model.trainable_weights:
        variable.assign(np.random.default_rng(3).normal(0, 0.5, variable.shape))
    expected = 1e-4 / 2 * sum(float(np.sum(np.square(w.numpy()))) for w in model.trainable_weights)
    assert len(model.losses) == len(model.trainable_weights)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)


def test_config_round_trip():
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=10, dropout_rate=0.2)
    restored = tf_keras.Model.from_config(model.get_config())
    restored.set_weights(model.get_weights())
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]
    images = np.random.default_rng(4).uniform(-1, 1, (2, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(restored(images, training=False).numpy(), model(images, training=False).numpy())


def test_weights_file_is_loaded(tmp_path):
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=10)
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)
    loaded = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=10, weights=path)
    for expected, actual in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(actual, expected)


def test_training_step_reduces_loss():
    rng = np.random.default_rng(5)
    images = rng.normal(0, 1, (32, 8, 8, 1)).astype("float32")
    labels = (images.mean(axis=(1, 2, 3)) > 0).astype("int64")
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=2)
    model.compile(optimizer=tf_keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    first = model.train_on_batch(images, labels)
    for _ in range(10):
        last = model.train_on_batch(images, labels)
    assert last < first


def test_keras3_model_has_same_names_and_shapes():
    import keras

    ours = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=10)
    other = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=10, keras_module=keras)
    assert isinstance(other, keras.Model)

    def shapes(model):
        return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers]

    assert shapes(other) == shapes(ours)


def test_min_input_side():
    assert keras_densenet.min_input_side("densenet121") == 29
    assert keras_densenet.min_input_side("densenet_bc100_k12") == 4
    keras_densenet.DenseNet("densenet121", include_top=False, input_shape=(29, 29, 3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="densenet122"), r"Unknown DenseNet variant.*Received: variant='densenet122'"),
        (dict(variant="densenet121", input_shape=(28, 64, 3)), r"at least 29.*Received: input_shape=\(28, 64, 3\)"),
        (dict(variant="densenet_bc22_k8", input_shape=(3, 8, 1)), r"at least 4.*Received: input_shape"),
        (dict(variant="densenet_bc22_k8", input_shape=(8, 8)), r"\(height, width, channels\).*Received: input_shape=\(8, 8\)"),
        (dict(variant="densenet_bc22_k8", pooling="mean"), r"`pooling` must be one of.*Received: pooling='mean'"),
        (dict(variant="densenet_bc22_k8", classes=0), r"`classes` must be a positive integer. Received: classes=0"),
        (dict(variant="densenet_bc22_k8", dropout_rate=1.0), r"`dropout_rate` must be in \[0, 1\). Received: dropout_rate=1.0"),
        (dict(variant="densenet_bc22_k8", weight_decay=-1e-4), r"`weight_decay` must be non-negative. Received"),
        (dict(variant="densenet_bc22_k8", weights="/no/such/file.h5"), r"`weights` must be None or the path.*/no/such/file.h5"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_densenet.DenseNet(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stem="tiny"), r"`stem` must be one of.*Received: stem='tiny'"),
        (dict(blocks=()), r"`blocks` must be a non-empty tuple"),
        (dict(growth_rate=0), r"Received: growth_rate=0"),
        (dict(compression=0.0), r"`compression` must be in \(0, 1\]. Received: compression=0.0"),
    ],
)
def test_invalid_spec_raises(kwargs, message):
    fields = dict(
        name="custom", blocks=(2, 2), growth_rate=4, initial_features=8, bottleneck=True, compression=0.5, stem="cifar", default_size=32
    )
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        keras_densenet.DenseNetSpec(**fields)


def test_cifar_depth_must_fit_blocks():
    with pytest.raises(ValueError, match=r"positive multiple of 6 for bottleneck=True. Received: depth=41"):
        specs.cifar_spec("bad", 41, 12, bottleneck=True)
