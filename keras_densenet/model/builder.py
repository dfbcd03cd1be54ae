"""One functional-API builder for every DenseNet variant, and keras.applications-style constructors."""

import os

from keras_densenet.model import layers as blocks
from keras_densenet.model import preprocessing
from keras_densenet.model import specs
from keras_densenet.model import weights as weight_files

POOLING_MODES = (None, "avg", "max")


def _default_keras():
    import tf_keras  # Imported lazily so that Keras 3 users never load tf_keras.

    return tf_keras


def _reduce_side(side, spec):
    """Return the spatial side after the spec's downsampling, or 0 when a layer gets an empty input."""
    if spec.stem == specs.IMAGENET_STEM:
        side = (side + 2 * 3 - 7) // 2 + 1  # conv1: 7x7, stride 2, padding 3
        side = (side + 2 * 1 - 3) // 2 + 1 if side >= 1 else 0  # pool1: 3x3, stride 2, padding 1
    for _ in range(len(spec.blocks) - 1):
        side = side // 2  # transition: 2x2 average pooling, stride 2
    return max(side, 0)


def min_input_side(variant):
    """Return the smallest input height and width that `variant` maps to at least a 1x1 feature map."""
    spec = specs.get_spec(variant)
    side = 1
    while _reduce_side(side, spec) < 1:
        side += 1
    return side


def _check_input_shape(input_shape, spec, include_top):
    if input_shape is None:
        channels = 3
        side = spec.default_size
        return (side, side, channels) if include_top else (None, None, channels)
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels) in channels-last order. "
            f"Received: input_shape={input_shape!r}"
        )
    if shape[2] is None or shape[2] < 1:
        raise ValueError(f"`input_shape` needs a known, positive channel count. Received: input_shape={input_shape!r}")
    minimum = min_input_side(spec)
    for side in shape[:2]:
        if side is not None and side < minimum:
            raise ValueError(
                f"`input_shape` is too small for {spec.name}: height and width must be at least {minimum} "
                f"because the network downsamples {spec.downsampling_steps} times. Received: input_shape={shape}"
            )
    return shape


def DenseNet(
    variant,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    dropout_rate=0.0,
    weight_decay=0.0,
    keras_module=None,
    name=None,
    include_preprocessing=False,
    memory_efficient=False,
):
    """Build a DenseNet as one flat functional-API model.

    The model holds only built-in Keras layers and no nested model, so it serializes with the
    standard formats and tensorflow-model-optimization can annotate every layer. The exception is
    `memory_efficient=True`, which adds one `RecomputedDenseLayer` per dense layer.

    Args:
        variant: A name from `keras_densenet.VARIANTS` or a `DenseNetSpec`.
        include_top: Whether to end with global average pooling and a `Dense` classifier.
        weights: `None` (random initialization), `"imagenet"` (keras.applications' published
            weights for densenet121/169/201, see `fetch_imagenet_weights`) or the path of a weights
            file. A legacy Keras `.h5` file, such as keras.applications' DenseNet files in either
            Keras's naming, loads by layer name with shape checks (`load_weights_by_name`); any
            other file goes to `model.load_weights`.
        input_tensor: Optional Keras tensor to use as the model input.
        input_shape: `(height, width, channels)`, channels last. Defaults to the variant's
            `default_size` with 3 channels when `include_top=True` and to `(None, None, 3)`
            otherwise. Height and width must be at least `min_input_side(variant)`.
        pooling: With `include_top=False`, `None` returns the last feature map, `"avg"` or `"max"`
            global pooling of it. Ignored when `include_top=True`.
        classes: Number of classes of the classifier.
        classifier_activation: Activation of the classifier: a name such as `"softmax"`, or `None`
            for logits.
        dropout_rate: Dropout rate after every convolution except the stem's. 0 disables dropout.
        weight_decay: Coupled L2 weight decay on every weight (see `LayerOptions`); 0 disables it.
        keras_module: The Keras module to build with, `tf_keras` (default) or Keras 3 `keras`.
        name: Model name; defaults to the variant name.
        include_preprocessing: Whether the model starts with `rescaling` and `normalization`
            layers that apply `preprocess_input`, so it takes RGB pixels in [0, 255].
        memory_efficient: Whether each dense layer recomputes its concatenation, BN, ReLU and first
            convolution in the backward pass instead of keeping them (see
            `memory_efficient_dense_block`). Outputs and gradients are those of the standard model.

    Returns:
        A functional `Model` of `keras_module`.

    Raises:
        ValueError: on an unknown variant, an invalid argument, an input smaller than the network's
            downsampling allows, a weights path that does not exist, or weights that do not fit the
            model (another variant, another class or channel count, an unreadable file).
        FileNotFoundError: if `weights="imagenet"` is neither cached nor downloadable.
    """
    spec = specs.get_spec(variant)
    if pooling not in POOLING_MODES:
        raise ValueError(f"`pooling` must be one of {POOLING_MODES}. Received: pooling={pooling!r}")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"`classes` must be a positive integer. Received: classes={classes!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"`dropout_rate` must be in [0, 1). Received: dropout_rate={dropout_rate!r}")
    if weight_decay < 0.0:
        raise ValueError(f"`weight_decay` must be non-negative. Received: weight_decay={weight_decay!r}")
    if weights is not None and weights != "imagenet" and not (
        isinstance(weights, (str, os.PathLike)) and os.path.exists(weights)
    ):
        raise ValueError(
            "`weights` must be None or the path of an existing weights file, or 'imagenet'. "
            f"Received: weights={weights!r}"
        )

    keras = keras_module or _default_keras()
    if weights == "imagenet":
        channels = _input_channels(input_tensor, input_shape)
        weight_files.check_imagenet_arguments(spec.name, include_top, classes, channels)
    options = blocks.LayerOptions(keras, weight_decay=weight_decay, dropout_rate=dropout_rate)

    if input_tensor is None:
        shape = _check_input_shape(input_shape, spec, include_top)
        inputs = keras.layers.Input(shape=shape, name="input")
    else:
        _check_input_shape(tuple(input_tensor.shape[1:]), spec, include_top)
        inputs = input_tensor

    x = inputs
    if include_preprocessing:
        x = preprocessing.preprocessing_layers(x, keras)

    if spec.stem == specs.IMAGENET_STEM:
        x = blocks.imagenet_stem(x, spec.initial_features, options)
    else:
        x = blocks.cifar_stem(x, spec.initial_features, options)

    last_stage = len(spec.blocks) + 1
    dense_block = blocks.memory_efficient_dense_block if memory_efficient else blocks.dense_block
    for stage, num_layers in enumerate(spec.blocks, start=2):
        x = dense_block(x, num_layers, spec.growth_rate, spec.bottleneck, name=f"conv{stage}", options=options)
        if stage != last_stage:
            x = blocks.transition(x, spec.compression, name=f"pool{stage}", options=options)

    outputs = blocks.head(x, include_top, pooling, classes, classifier_activation, options)
    model = keras.Model(inputs, outputs, name=name or spec.name)
    if weights == "imagenet":
        path = weight_files.fetch_imagenet_weights(spec.name, include_top, keras_module=keras)
        weight_files.load_weights_by_name(model, path, variant_name=spec.name)
    elif weights is not None:
        _load_weights_file(model, weights, spec.name)
    return model


def _input_channels(input_tensor, input_shape):
    if input_tensor is not None:
        return input_tensor.shape[-1]
    if input_shape is not None:
        return tuple(input_shape)[-1]
    return 3


def _load_weights_file(model, path, variant_name):
    """Load `path` by layer name when it is an HDF5 file in the legacy layout, else with `load_weights`."""
    import h5py

    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as handle:
                legacy = "layer_names" in handle.attrs or "model_weights" in handle
        except OSError:
            legacy = True  # `read_weight_file` reports the unreadable file.
        if legacy:
            weight_files.load_weights_by_name(model, path, variant_name=variant_name)
            return
    model.load_weights(path)


def _constructor(function_name, variant):
    def build(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        dropout_rate=0.0,
        weight_decay=0.0,
        keras_module=None,
        name=None,
        include_preprocessing=False,
        memory_efficient=False,
    ):
        return DenseNet(
            variant,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            dropout_rate=dropout_rate,
            weight_decay=weight_decay,
            keras_module=keras_module,
            name=name,
            include_preprocessing=include_preprocessing,
            memory_efficient=memory_efficient,
        )

    build.__name__ = build.__qualname__ = function_name
    build.__doc__ = f"Build {variant}. Arguments are those of `DenseNet` after `variant`."
    return build


DenseNet121 = _constructor("DenseNet121", "densenet121")
DenseNet161 = _constructor("DenseNet161", "densenet161")
DenseNet169 = _constructor("DenseNet169", "densenet169")
DenseNet201 = _constructor("DenseNet201", "densenet201")
DenseNet264 = _constructor("DenseNet264", "densenet264")
