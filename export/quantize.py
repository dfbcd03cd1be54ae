"""Quantization-aware training (QAT) of keras-densenet models with tensorflow-model-optimization.

tfmot 0.8.1 quantizes a BatchNormalization layer only when it directly follows a Conv2D or
DepthwiseConv2D, because the TFLite converter then folds it into the convolution. A DenseNet also
normalizes every concatenation (BN-ReLU-Conv), and `tfmot.quantization.keras.quantize_model` raises
on those layers. So `prepare_for_qat` rewrites each such BatchNormalization as a 1x1
DepthwiseConv2D with a bias, which the converter turns into one int8 DEPTHWISE_CONV_2D with the
following ReLU fused.

Where the BatchNormalization feeds a ReLU and then a Conv2D or Dense layer (every one in a
DenseNet with a classifier), the magnitude of its per-channel scale moves into that layer's
kernel, because `relu(a * x) = a * relu(x)` for `a >= 0`. The depthwise convolution keeps a sign
and an offset per channel (`BatchNormShift`), whose kernel of -1, 0 and 1 is exact in int8 with
one scale for the whole tensor. That saves the 24 bytes per channel of a per-channel scale and
zero point in the `.tflite` file, and QAT simulates the quantization of that kernel exactly.
"""

import os

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras

import keras_densenet

from keras_densenet.export import prepare
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


@tf_keras.utils.register_keras_serializable(package="keras_densenet")
class BatchNormShift(tf_keras.layers.DepthwiseConv2D):
    """The sign and offset per channel that stay of an inference BatchNormalization after folding.

    A 1x1 depthwise convolution whose kernel contains -1, 0 or 1 per channel and whose bias contains
    the offset. `prepare_for_qat` moves the magnitude of the scale into the next Conv2D or Dense
    kernel. A class of its own (rather than DepthwiseConv2D) keeps tfmot's default 8-bit transforms
    from dropping its kernel quantizer, so `quantize_model` can quantize the kernel per tensor.
    """


@tf_keras.utils.register_keras_serializable(package="keras_densenet")
class FoldedConv2D(tf_keras.layers.Conv2D):
    """A Conv2D with the inference affine of the BatchNormalization that followed it folded in.

    `prepare_for_qat(..., keep_conv_batch_norm=False)` builds it, so that QAT quantizes the folded
    kernel, which the `.tflite` file stores, rather than the kernel before folding. A class of its
    own keeps tfmot's default 8-bit transforms from dropping its kernel quantizer.
    """


# Layers between the ReLU after a BatchNormalization and the next kernel through which a
# non-negative per-channel factor passes unchanged: each is linear or takes a maximum per channel.
_FACTOR_PASSING_LAYERS = (
    "Dropout", "SpatialDropout2D", "ZeroPadding2D", "AveragePooling2D", "MaxPooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D",
)


def _only_consumer(layer):
    """Return the one layer that reads `layer`'s output, or None when there are several or none."""
    if len(layer.inbound_nodes) != 1 or len(layer.outbound_nodes) != 1:
        return None
    consumer = layer.outbound_nodes[0].outbound_layer
    if len(consumer.inbound_nodes) != 1 or len(_inbound_layers(consumer)) != 1:
        return None
    return consumer


def _is_plain_relu(layer, keras):
    if isinstance(layer, keras.layers.ReLU):
        config = layer.get_config()
        return config.get("max_value") is None and not config.get("negative_slope") and not config.get("threshold")
    if isinstance(layer, keras.layers.Activation):
        return keras.activations.serialize(layer.activation) == "relu"
    return False


def _fold_target(layer, keras):
    """Return the Conv2D or Dense layer that can absorb the scale of BatchNormalization `layer`, or None.

    The path must be BatchNormalization, a plain ReLU, any `_FACTOR_PASSING_LAYERS`, then a Conv2D
    (not grouped) or Dense layer, each reading only the layer before it and read by nothing else.
    """
    relu = _only_consumer(layer)
    if relu is None or not _is_plain_relu(relu, keras):
        return None
    current = _only_consumer(relu)
    while current is not None and type(current).__name__ in _FACTOR_PASSING_LAYERS:
        current = _only_consumer(current)
    if type(current) is keras.layers.Conv2D and current.groups == 1:
        return current
    if type(current) is keras.layers.Dense:
        return current
    return None


def _split_affine(layer):
    """Split the inference affine of BatchNormalization `layer` into `(sign, offset, factor)`.

    For every channel `scale * x + bias == factor * (sign * x + offset)` with `factor > 0`, so
    `relu(scale * x + bias) == factor * relu(sign * x + offset)`. The factor is `|scale|`, raised
    where needed so that `|offset|` stays within the input's range estimated from the moving
    statistics: then `sign` lies in [-1, 1] rather than being -1, 0 or 1, and the offset of an
    almost constant channel does not widen the int8 range of the whole tensor.
    """
    scale, bias = (value.astype(np.float64) for value in _folded_affine(layer))
    mean = layer.moving_mean.numpy().astype(np.float64)
    std = np.sqrt(layer.moving_variance.numpy().astype(np.float64) + layer.epsilon)
    input_range = max(float(np.max(np.abs(mean) + 4.0 * std)), 1e-6)
    factor = np.maximum(np.abs(scale), np.abs(bias) / input_range)
    factor = np.where(factor > 0.0, factor, 1.0)  # scale == bias == 0: the channel is 0 either way.
    sign = scale / factor
    offset = bias / factor
    return sign.astype(np.float32), offset.astype(np.float32), factor.astype(np.float32)


def _merge_target(layer, keras):
    """Return the Conv2D that BatchNormalization `layer` can merge into, or None.

    That is a linear Conv2D whose output reaches `layer` directly or through Dropout layers, each
    read by nothing else, where a plain ReLU reads only `layer`, so the merged convolution's output
    goes into a ReLU. Dropout is the identity in inference, so moving the affine before it keeps
    the inference function.
    """
    if not _is_plain_relu(_only_consumer(layer), keras):
        return None
    inbound = _inbound_layers(layer)
    if len(layer.inbound_nodes) != 1 or len(inbound) != 1:
        return None
    source = inbound[0]
    while isinstance(source, keras.layers.Dropout) and _only_consumer(source) is not None:
        source = _inbound_layers(source)[0]
    if type(source) is not keras.layers.Conv2D or _only_consumer(source) is None:
        return None
    return source if keras.activations.serialize(source.activation) == "linear" else None


def _rebuild(model, make_layer, removed, keras):
    """Rebuild functional `model` from the layers `make_layer` returns, dropping the `removed` layers.

    Each removed layer must have one input; its output becomes that input. Every layer of `model`
    must be called once (one inbound node), as in a keras-densenet model.
    """
    new_tensors = {}

    def mapped(tensors):
        return [new_tensors[id(t)] for t in tensors] if isinstance(tensors, (list, tuple)) else new_tensors[id(tensors)]

    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            config = layer.get_config()
            new_tensors[id(layer.output)] = keras.Input(
                batch_shape=config["batch_input_shape"], dtype=config["dtype"], name=layer.name
            )
        elif layer.name in removed:
            new_tensors[id(layer.output)] = mapped(layer.input)
        else:
            new_tensors[id(layer.output)] = make_layer(layer)(mapped(layer.input))
    return keras.Model(mapped(model.inputs), mapped(model.outputs), name=model.name)


def prepare_for_qat(model, keep_conv_batch_norm=True):
    """Return a copy of `model` in which tfmot can quantize every layer.

    A BatchNormalization stays only when it follows a linear Conv2D whose output feeds nothing
    else, because tfmot and the converter fold it into that convolution. Every other one computes
    the inference affine `scale * x + bias`, with `scale = gamma / sqrt(moving_variance + epsilon)`
    and `bias = beta - moving_mean * scale`, and becomes a 1x1 depthwise convolution with a bias
    and the same name:

    - when a plain ReLU and then a Conv2D or Dense layer follow it (see `_fold_target`), a
      `BatchNormShift` holding `sign * x + offset`, with the per-channel factor
      `scale = factor * sign` multiplied into that layer's kernel along its input channels;
    - otherwise a `DepthwiseConv2D` holding `scale` and `bias`.

    All other layers are copied with their weights, so the copy computes the same function as
    `model` in inference (up to float32 rounding). `model` is not modified. The copy has the same
    layer names, except for the BatchNormalization layers merged when `keep_conv_batch_norm` is
    False.

    NOTE: the rewritten layers have no moving statistics, so QAT fine-tuning trains their affine as
    ordinary weights and never renormalizes batches. The copy drops their gamma and beta regularizers.

    Args:
        model: A functional tf_keras model, such as one built by `keras_densenet.DenseNet` with the
            default `keras_module`.
        keep_conv_batch_norm: Keep a BatchNormalization that follows a linear Conv2D, for tfmot
            and the converter to fold after QAT. False merges it into that convolution now (a
            `FoldedConv2D`) when a plain ReLU follows, and otherwise rewrites it like the others.
            Per-tensor kernels need False: a per-channel factor folded in after QAT no longer
            fits the kernel's one learned int8 range.

    Returns:
        A new functional tf_keras model with the same inputs and outputs.

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
    folds = {}  # BatchNormalization name -> name of the layer whose kernel takes its factor.
    merged = {}  # Conv2D name -> the BatchNormalization layer merged into it.
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        conv = None if keep_conv_batch_norm else _merge_target(layer, keras)
        if conv is not None:
            merged[conv.name] = layer
        elif _needs_rewrite(layer, keras) or not keep_conv_batch_norm:
            _check_batch_norm(layer)
            rewritten.add(layer.name)
            target = _fold_target(layer, keras)
            if target is not None:
                folds[layer.name] = target.name

    def make_layer(layer):
        if layer.name in rewritten:
            layer_class = BatchNormShift if layer.name in folds else keras.layers.DepthwiseConv2D
            return layer_class(kernel_size=1, use_bias=True, name=layer.name, dtype=layer.dtype_policy.name)
        if layer.name in merged:
            return FoldedConv2D.from_config({**layer.get_config(), "use_bias": True})
        return layer.__class__.from_config(layer.get_config())

    if merged:
        removed = {batch_norm.name for batch_norm in merged.values()}
        clone = _rebuild(model, make_layer, removed, keras)
    else:
        # keras.models.clone_model walks the functional graph in order and rebuilds each node from the
        # layer that `clone_function` returns, so a one-to-one layer swap needs no graph surgery.
        # tfmot's ModelTransformer could do the same but is a private API of tfmot.
        removed = set()
        clone = keras.models.clone_model(model, clone_function=make_layer)

    factors = {}  # Name of a Conv2D or Dense layer -> factor per input channel.
    for layer in model.layers:
        if layer.name in folds:
            sign, offset, factor = _split_affine(layer)
            clone.get_layer(layer.name).set_weights([sign.reshape(1, 1, -1, 1), offset])
            factors[folds[layer.name]] = factor
        elif layer.name in rewritten:
            scale, bias = _folded_affine(layer)
            clone.get_layer(layer.name).set_weights([scale.reshape(1, 1, -1, 1), bias])
    for layer in model.layers:
        if layer.name in rewritten or layer.name in removed or not layer.weights:
            continue
        weights = layer.get_weights()
        if layer.name in factors:
            # Conv2D kernels are (height, width, in, out) and Dense kernels (in, out).
            weights[0] = weights[0] * factors[layer.name].reshape(-1, 1).astype(weights[0].dtype)
        if layer.name in merged:
            scale, bias = _folded_affine(merged[layer.name])
            conv_bias = weights[1] if layer.use_bias else np.zeros_like(bias)
            weights = [weights[0] * scale.astype(weights[0].dtype), conv_bias * scale + bias]
        clone.get_layer(layer.name).set_weights(weights)
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


class KernelQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Quantize config of `BatchNormShift` and `FoldedConv2D`: the kernel per tensor, no output quantizer.

    A `BatchNormShift` kernel contains values in [-1, 1], mostly -1, 0 and 1, so one symmetric int8
    scale for the whole tensor represents it as well as one per channel. A `FoldedConv2D` exists
    only for per-tensor kernels. A ReLU follows both and quantizes the output, and the converter
    fuses it into the convolution.

    Args:
        kernel_attribute: Name of the layer's kernel attribute: `"depthwise_kernel"` or `"kernel"`.
    """

    def __init__(self, kernel_attribute):
        self.kernel_attribute = kernel_attribute

    def get_weights_and_quantizers(self, layer):
        quantizer = tfmot.quantization.keras.quantizers.LastValueQuantizer(
            num_bits=8, per_axis=False, symmetric=True, narrow_range=True
        )
        return [(getattr(layer, self.kernel_attribute), quantizer)]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        setattr(layer, self.kernel_attribute, quantize_weights[0])

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {"kernel_attribute": self.kernel_attribute}


class InputNormalizationQuantizeConfig(SameScaleQuantizeConfig):
    """Quantize config of the input normalization that `bake_normalization` inserts.

    It adds no kernel quantizer: tfmot's wrapper would list a quantized kernel among its trainable
    weights even though the layer is frozen, and on 0..255 pixels that kernel diverges in QAT.
    The converter quantizes the fixed kernel itself. The output range is the running minimum and
    maximum of every batch (AllValuesQuantizer), so it is exact after the first batch. tfmot's
    default moving average starts at [-6, 6] and needs thousands of steps to reach the range of
    normalized pixels, which puts the network's input on a coarser int8 grid.
    """

    def get_output_quantizers(self, layer):
        return [
            tfmot.quantization.keras.quantizers.AllValuesQuantizer(
                num_bits=8, per_axis=False, symmetric=False, narrow_range=False
            )
        ]


CUSTOM_OBJECTS = {
    "SameScaleQuantizeConfig": SameScaleQuantizeConfig,
    "KernelQuantizeConfig": KernelQuantizeConfig,
    "InputNormalizationQuantizeConfig": InputNormalizationQuantizeConfig,
    "BatchNormShift": BatchNormShift,
    "FoldedConv2D": FoldedConv2D,
}


def quantize_scope():
    """Return a context manager under which tf_keras can deserialize a QAT model of this module."""
    return tfmot.quantization.keras.quantize_scope(dict(CUSTOM_OBJECTS))


def _quantize_config_for(layer, keras):
    if isinstance(layer, keras.layers.AveragePooling2D):
        return SameScaleQuantizeConfig()
    if isinstance(layer, BatchNormShift):
        return KernelQuantizeConfig("depthwise_kernel")
    if isinstance(layer, FoldedConv2D):
        return KernelQuantizeConfig("kernel")
    if type(layer) is keras.layers.DepthwiseConv2D and layer.name == prepare.NORMALIZATION_LAYER:
        return InputNormalizationQuantizeConfig()
    return None


def quantize_model(model, per_channel=True):
    """Return a QAT copy of `model` with fake-quant ops for full-integer int8 conversion.

    The model goes through `prepare_for_qat`, then tfmot's default 8-bit scheme quantizes every
    layer. AveragePooling2D gets `SameScaleQuantizeConfig`; `BatchNormShift` and `FoldedConv2D`
    get `KernelQuantizeConfig`. The result is not compiled; compile it and fine-tune it with
    `model.fit`, then convert it with `convert(..., quantization="qat_int8")` and the same
    `per_channel`.

    Args:
        model: A functional tf_keras model from `keras_densenet.DenseNet`. It is not modified.
        per_channel: Quantize convolution kernels with one scale per output channel (True, the
            TFLite default) or one scale per tensor (False). Per tensor saves 24 bytes per output
            channel in the `.tflite` file, which matters for small models. It also merges each
            BatchNormalization that follows a convolution into it before QAT (see
            `prepare_for_qat`), so those layers train with their moving statistics frozen.

    Returns:
        A new tf_keras model whose layers are tfmot `QuantizeWrapperV2` and `QuantizeLayer` layers.

    Raises:
        ValueError: as `prepare_for_qat`, or if `per_channel` is not a bool.
    """
    if not isinstance(per_channel, bool):
        raise ValueError(f"`per_channel` must be True or False. Received: per_channel={per_channel!r}")
    keras = _keras()
    prepared = prepare_for_qat(model, keep_conv_batch_norm=per_channel)

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        return tfmot.quantization.keras.quantize_annotate_layer(layer, _quantize_config_for(layer, keras))

    # The clone shares its layers, and thus its weights, with `prepared`; quantize_apply copies them.
    annotated = keras.models.clone_model(prepared, clone_function=annotate)
    scheme = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme(disable_per_axis=not per_channel)
    with quantize_scope():
        return tfmot.quantization.keras.quantize_apply(annotated, scheme=scheme)


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
