"""Quantization-aware training (QAT) of keras-densenet models with tensorflow-model-optimization.

tfmot 0.8.1 quantizes a BatchNormalization layer only when it directly follows a Conv2D or
DepthwiseConv2D, because the TFLite converter then folds it into the convolution. A DenseNet also
normalizes every concatenation (BN-ReLU-Conv), and `tfmot.quantization.keras.quantize_model` raises
on those layers. So `prepare_for_qat` rewrites each such BatchNormalization as the per-channel
affine it computes in inference, a 1x1 DepthwiseConv2D with a bias. With TensorFlow 2.21 the
converter turns that into one int8 DEPTHWISE_CONV_2D with a per-channel scale and the following
ReLU fused. An output-only quantize config on the BatchNormalization instead converts to separate
MUL and ADD ops whose constants share one per-tensor scale.
"""

import os

import numpy as np
import tensorflow_model_optimization as tfmot

import keras_densenet

from keras_densenet.utils import files


def _keras():
    import tf_keras  # tfmot quantizes only tf_keras (Keras 2) models.

    return tf_keras


def _inbound_layers(layer):
    layers = []
    for node in layer.inbound_nodes:
        inbound = node.inbound_layers
        layers.extend(inbound if isinstance(inbound, (list, tuple)) else [inbound])
    return layers


def _needs_rewrite(layer, keras):
    """Return whether `layer` is a BatchNormalization that tfmot cannot fold into a convolution.

    tfmot folds a BatchNormalization only when its one input comes from a Conv2D or DepthwiseConv2D
    with a linear activation whose output feeds nothing else. In a CIFAR-layout DenseNet the stem
    convolution also feeds the first concatenation, so the BatchNormalization after it is rewritten.
    """
    if not isinstance(layer, keras.layers.BatchNormalization):
        return False
    inbound = _inbound_layers(layer)
    if len(inbound) != 1 or len(layer.inbound_nodes) != 1:
        return True
    source = inbound[0]
    foldable = (
        isinstance(source, keras.layers.Conv2D)
        and keras.activations.serialize(source.activation) == "linear"
        and len(source.outbound_nodes) == 1
    )
    return not foldable


def _check_batch_norm(layer):
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = len(layer.input_spec.shape) if layer.input_spec and layer.input_spec.shape else 4
    if list(axis) not in ([-1], [rank - 1]) or rank != 4:
        raise ValueError(
            "`prepare_for_qat` rewrites only BatchNormalization layers on 4-D channels-last feature maps "
            f"(axis=-1). Build the model with channels-last inputs. Received: layer={layer.name!r} with "
            f"axis={layer.axis!r}"
        )


def _folded_affine(layer):
    """Return the inference affine `(scale, bias)` of a BatchNormalization layer as float32 arrays."""
    mean = layer.moving_mean.numpy().astype(np.float64)
    variance = layer.moving_variance.numpy().astype(np.float64)
    gamma = layer.gamma.numpy().astype(np.float64) if layer.scale else np.ones_like(mean)
    beta = layer.beta.numpy().astype(np.float64) if layer.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + layer.epsilon)
    bias = beta - mean * scale
    return scale.astype(np.float32), bias.astype(np.float32)


def prepare_for_qat(model):
    """Return a copy of `model` in which tfmot can quantize every layer.

    Every BatchNormalization that tfmot cannot fold becomes a 1x1 `DepthwiseConv2D(use_bias=True)`
    with the same name, whose kernel and bias hold the layer's inference affine:
    `scale = gamma / sqrt(moving_variance + epsilon)` and `bias = beta - moving_mean * scale`.
    A BatchNormalization stays only when it follows a linear Conv2D whose output feeds nothing
    else, because tfmot and the converter fold it into that convolution. All other layers are
    copied with their weights, so the copy computes the same function as `model` in inference (up
    to float32 rounding). `model` is not modified.

    NOTE: the rewritten layers have no moving statistics, so QAT fine-tuning trains their affine as
    ordinary weights and never renormalizes batches. The copy drops their gamma and beta regularizers.

    Args:
        model: A functional tf_keras model, such as one built by `keras_densenet.DenseNet` with the
            default `keras_module`.

    Returns:
        A new functional tf_keras model with the same inputs, outputs and layer names.

    Raises:
        ValueError: if `model` is a Keras 3 model or was built with `memory_efficient=True`, is
            not a functional tf_keras model, or a BatchNormalization to rewrite does not normalize
            the last axis of a 4-D tensor.
    """
    keras_densenet.require_tf_keras(model, "qat")
    keras_densenet.require_standard_layers(model, "QAT")
    keras = _keras()
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise ValueError(
            "`model` must be a functional tf_keras model, such as one from keras_densenet.DenseNet. "
            f"Received: model={type(model).__name__}"
        )

    rewritten = set()

    # keras.models.clone_model walks the functional graph in order and rebuilds each node from the
    # layer that `clone_function` returns, so a one-to-one layer swap needs no graph surgery. tfmot's
    # ModelTransformer could do the same but is a private API of tfmot.
    def clone_layer(layer):
        if _needs_rewrite(layer, keras):
            _check_batch_norm(layer)
            rewritten.add(layer.name)
            return keras.layers.DepthwiseConv2D(
                kernel_size=1, use_bias=True, name=layer.name, dtype=layer.dtype_policy.name
            )
        return layer.__class__.from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=clone_layer)

    for layer in model.layers:
        target = clone.get_layer(layer.name)
        if layer.name in rewritten:
            scale, bias = _folded_affine(layer)
            target.set_weights([scale.reshape(1, 1, -1, 1), bias])
        elif layer.weights:
            target.set_weights(layer.get_weights())
    return clone


class SameScaleQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Quantize config that adds no quantizer, for layers whose int8 kernel keeps the input scale.

    TFLite's int8 AVERAGE_POOL_2D requires equal input and output scale and zero point, so an
    output quantizer with a range of its own would conflict with the input's range. Without one,
    the pooled tensor inherits the scale of its input.
    """

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


CUSTOM_OBJECTS = {"SameScaleQuantizeConfig": SameScaleQuantizeConfig}


def quantize_scope():
    """Return a context manager under which tf_keras can deserialize a QAT model of this module."""
    return tfmot.quantization.keras.quantize_scope(dict(CUSTOM_OBJECTS))


def _quantize_config_for(layer, keras):
    if isinstance(layer, keras.layers.AveragePooling2D):
        return SameScaleQuantizeConfig()
    return None


def quantize_model(model):
    """Return a QAT copy of `model` with fake-quant ops for full-integer int8 conversion.

    The model goes through `prepare_for_qat`, then tfmot's default 8-bit scheme quantizes every
    layer. AveragePooling2D gets `SameScaleQuantizeConfig`. The result is not compiled; compile it
    and fine-tune it with `model.fit`, then convert it with `convert(..., quantization="int8")`.

    Args:
        model: A functional tf_keras model from `keras_densenet.DenseNet`. It is not modified.

    Returns:
        A new tf_keras model whose layers are tfmot `QuantizeWrapperV2` and `QuantizeLayer` layers.

    Raises:
        ValueError: as `prepare_for_qat`.
    """
    keras = _keras()
    prepared = prepare_for_qat(model)

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        return tfmot.quantization.keras.quantize_annotate_layer(layer, _quantize_config_for(layer, keras))

    # The clone shares its layers, and thus its weights, with `prepared`; quantize_apply copies them.
    annotated = keras.models.clone_model(prepared, clone_function=annotate)
    with quantize_scope():
        return tfmot.quantization.keras.quantize_apply(annotated)


def save_qat_model(model, path):
    """Save a QAT model as one HDF5 file at `path`, atomically.

    HDF5 stores the architecture with the quantize configs and every weight, including the
    quantizers' ranges, and `load_qat_model` rebuilds it in any process.

    Args:
        model: A model from `quantize_model`.
        path: Destination file; it should end with `.h5`.

    Raises:
        ValueError: if `path` does not end with `.h5`.
    """
    if not os.fspath(path).endswith(".h5"):
        raise ValueError(f"`path` of a QAT model must end with .h5. Received: path={os.fspath(path)!r}")
    with files.atomic_path(path) as temporary:
        model.save(temporary, save_format="h5", include_optimizer=False)


def load_qat_model(path):
    """Load a QAT model that `save_qat_model` wrote.

    Args:
        path: The `.h5` file.

    Returns:
        The uncompiled QAT model.

    Raises:
        ValueError: if `path` does not exist or is not a readable QAT model file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"`path` must be an existing QAT model file; run densenet-export to create it. Received: path={path!r}"
        )
    keras = _keras()
    try:
        with quantize_scope():
            return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ValueError(
            f"`path` is not a valid QAT model file: {reason}; re-create it with densenet-export. "
            f"Received: path={path!r}"
        ) from error
