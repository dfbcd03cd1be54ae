"""Size and cost of a DenseNet: parameters, multiply-accumulates, layers and stage output shapes."""

import numpy as np

from keras_densenet.model import builder
from keras_densenet.model import features
from keras_densenet.model import specs


def count_macs(model):
    """Return the multiply-accumulates of one forward pass of one image through `model`.

    Counts convolutions (`out_h * out_w * k_h * k_w * in_channels * out_channels`) and dense layers
    (`in_features * out_features`). BN, ReLU, pooling and concatenation are left out, as in the usual
    MAC counts of CNNs.

    Raises:
        ValueError: if the spatial size of a convolution output is unknown (build with a fixed input size).
    """
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            out_shape = layer.output.shape
            if None in tuple(out_shape[1:3]):
                raise ValueError(
                    f"Counting multiply-accumulates needs a fixed input height and width. Received: "
                    f"{layer.name} output shape={tuple(out_shape)}"
                )
            kernel_h, kernel_w, in_channels, out_channels = layer.kernel.shape
            total += int(out_shape[1]) * int(out_shape[2]) * kernel_h * kernel_w * in_channels * out_channels
        elif kind == "Dense":
            total += int(np.prod(layer.kernel.shape))
    return int(total)


def summarize(variant, input_size=None, channels=3, classes=1000, include_top=True):
    """Build `variant` with tf_keras and return its size and cost as a JSON-serializable dict.

    Args:
        variant: A name from `VARIANTS` or a `DenseNetSpec`.
        input_size: `(height, width)` or one side for a square input; defaults to the variant's
            `default_size`.
        channels: Input channels.
        classes: Classifier outputs, used when `include_top=True`.
        include_top: Whether to count the classifier.

    Returns:
        A dict with keys `variant`, `input_shape`, `depth` (the paper's `L`), `keras_layers`,
        `trainable_params`, `total_params`, `macs`, and `stages`: a list of
        `{"name", "stride", "shape"}` with the output shape (height, width, channels) per stage.

    Raises:
        ValueError: on an unknown variant or an input too small for it.
    """
    spec = specs.get_spec(variant)
    if input_size is None:
        input_size = spec.default_size
    height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    model = builder.DenseNet(spec, include_top=include_top, input_shape=(height, width, channels), classes=classes)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    stage_names = features.stage_layer_names(model)
    strides = features.stage_strides(spec)
    stages = [
        {"name": name, "stride": stride, "shape": list(model.get_layer(name).output.shape[1:])}
        for name, stride in zip(stage_names, strides)
    ]
    return {
        "variant": spec.name,
        "input_shape": [height, width, channels],
        "depth": spec.depth,
        "keras_layers": len(model.layers),
        "trainable_params": trainable,
        "total_params": int(model.count_params()),
        "macs": count_macs(model),
        "stages": stages,
    }
