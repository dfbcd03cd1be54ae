"""Float32 copies of trained models and input normalization baked into a model, before conversion.

Both rebuild the model from its functional config and copy the weights by layer name, so they work
on models loaded from any densenet-train run, including ones trained under a mixed-precision policy
or created inside a `tf.distribute` strategy scope.
"""

import copy

import numpy as np

NORMALIZATION_LAYER = "input_normalization"
DEFAULT_PIXEL_SCALE = 255.0


def _keras():
    import tf_keras  # tfmot and this module work on tf_keras (Keras 2) models only.

    return tf_keras


def _check_functional(model):
    keras = _keras()
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise ValueError(
            "`model` must be a functional tf_keras model, such as one from keras_densenet.DenseNet. "
            f"Received: model={type(model).__name__}"
        )


def _set_float32(layer_config):
    config = layer_config["config"]
    if "dtype" in config:
        config["dtype"] = "float32"


def _rebuild(model, config):
    keras = _keras()
    rebuilt = keras.Model.from_config(config)
    for layer in model.layers:
        if layer.weights:
            rebuilt.get_layer(layer.name).set_weights(layer.get_weights())
    return rebuilt


def float32_copy(model):
    """Return a copy of a functional tf_keras model in which every layer computes in float32.

    A model trained under the `mixed_float16` policy computes in float16 with float32 weights; the
    copy has the same weights and a float32 policy on every layer, so the TFLite converter and
    tfmot see a plain float32 graph. Variables of the copy are ordinary ones even when `model` was
    created inside a `tf.distribute` strategy scope, as long as the copy is made outside it.

    Args:
        model: A functional tf_keras model. It is not modified.

    Returns:
        A new functional tf_keras model with the same layer names and weights.

    Raises:
        ValueError: if `model` is not a functional tf_keras model.
    """
    _check_functional(model)
    config = copy.deepcopy(model.get_config())
    for layer_config in config["layers"]:
        _set_float32(layer_config)
    return _rebuild(model, config)


def _rename_inbound(nodes, old, new):
    """Point every inbound connection from layer `old` at layer `new`, in a functional config."""
    for node in nodes:
        for connection in node:
            if connection[0] == old:
                connection[0] = new


def bake_normalization(model, mean, std, pixel_scale=DEFAULT_PIXEL_SCALE):
    """Return a float32 copy of `model` that takes raw pixels and normalizes them itself.

    A 1x1 `DepthwiseConv2D` named `input_normalization` (not trainable) is inserted after the
    input and computes `(pixels / pixel_scale - mean) / std` per channel, the normalization of
    `keras_densenet.data.make_dataset`. A depthwise convolution is used instead of a
    `Normalization` layer because tfmot quantizes it (per-channel int8), so the layer stays inside
    a full-integer model. With `input_type="uint8"` such a model then takes pixels 0..255 directly.

    Args:
        model: A functional tf_keras model with one image input, channels last. It is not modified.
        mean: Per-channel mean of images scaled to [0, 1], one value per input channel.
        std: Per-channel standard deviation, as `mean`; every value positive.
        pixel_scale: Value of a full-intensity pixel: 255.0 for 8-bit images.

    Returns:
        A new functional tf_keras model, float32, with the same output.

    Raises:
        ValueError: if `model` is not a functional tf_keras model with one 4-D input, `mean` or
            `std` does not have one value per channel, or a `std` value or `pixel_scale` is not
            positive.
    """
    _check_functional(model)
    if len(model.inputs) != 1 or len(model.input_shape) != 4:
        raise ValueError(
            "`model` must have one 4-D image input (batch, height, width, channels) to bake the "
            f"normalization into. Received: input_shape={model.input_shape}"
        )
    channels = model.input_shape[-1]
    mean = np.asarray(mean, np.float64).reshape(-1)
    std = np.asarray(std, np.float64).reshape(-1)
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise ValueError(
                f"`{name}` must have one value per input channel ({channels}). Received: {name}={values.tolist()}"
            )
    if np.any(std <= 0) or not pixel_scale > 0:
        raise ValueError(
            "`std` values and `pixel_scale` must be positive. "
            f"Received: std={std.tolist()}, pixel_scale={pixel_scale!r}"
        )

    config = copy.deepcopy(model.get_config())
    for layer_config in config["layers"]:
        _set_float32(layer_config)
    input_name = config["input_layers"][0][0]
    for layer_config in config["layers"]:
        _rename_inbound(layer_config["inbound_nodes"], input_name, NORMALIZATION_LAYER)
    keras = _keras()
    normalization = keras.layers.DepthwiseConv2D(1, use_bias=True, name=NORMALIZATION_LAYER, trainable=False)
    config["layers"].insert(
        1,
        {
            "class_name": "DepthwiseConv2D",
            "config": normalization.get_config(),
            "name": NORMALIZATION_LAYER,
            "inbound_nodes": [[[input_name, 0, 0, {}]]],
        },
    )
    rebuilt = _rebuild(model, config)

    scale = 1.0 / (pixel_scale * std)
    rebuilt.get_layer(NORMALIZATION_LAYER).set_weights(
        [scale.reshape(1, 1, channels, 1).astype(np.float32), (-mean / std).astype(np.float32)]
    )
    return rebuilt
