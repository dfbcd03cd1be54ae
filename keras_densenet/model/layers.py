"""DenseNet building blocks as functions on Keras functional-API tensors.

Each function takes a `keras` module (`tf_keras` or Keras 3 `keras`) and uses only layers both
provide, so one builder serves both runtimes. Every layer gets a name from the scheme below, which
is keras.applications' scheme wherever the architecture is the same, so weights map by name:

    conv1_pad, conv1_conv, conv1_bn, conv1_relu     ImageNet stem (CIFAR stem: conv1_conv only)
    pool1_pad, pool1                                ImageNet stem max pooling
    conv{s}_block{i}_0_bn, conv{s}_block{i}_0_relu  dense layer i of block s: pre-activation
    conv{s}_block{i}_1_conv, _1_bn, _1_relu         bottleneck 1x1 convolution (BC variants)
    conv{s}_block{i}_2_conv                         3x3 convolution adding `growth_rate` channels
    conv{s}_block{i}_{1,2}_drop                     dropout after each convolution (optional)
    conv{s}_block{i}_concat                         concatenation of input and new features
    pool{s}_bn, pool{s}_relu, pool{s}_conv, pool{s}_drop, pool{s}_pool   transition after block s
    bn, relu, avg_pool | max_pool, predictions      head

Blocks are numbered from 2 as in keras.applications, because the stem is stage 1.
"""

BN_EPSILON = 1.001e-5  # keras.applications' DenseNet value, kept so that its weights give equal outputs.
BN_AXIS = -1  # Channels-last only.


class LayerOptions:
    """Per-model settings every block applies: the Keras module, regularization and dropout.

    Attributes:
        keras: The `tf_keras` or Keras 3 `keras` module whose layers are created.
        weight_decay: Coefficient of the coupled L2 penalty on every weight. Each weight `w` adds
            `weight_decay / 2 * sum(w ** 2)` to the loss, so its gradient gains `weight_decay * w`,
            which is coupled SGD weight decay. 0 disables it.
        dropout_rate: Dropout rate after each convolution except the stem's; 0 disables it.
    """

    def __init__(self, keras, weight_decay=0.0, dropout_rate=0.0):
        self.keras = keras
        self.weight_decay = weight_decay
        self.dropout_rate = dropout_rate

    def regularizer(self):
        if not self.weight_decay:
            return None
        return self.keras.regularizers.L2(self.weight_decay / 2.0)

    def conv(self, x, filters, kernel_size, name, strides=1, padding="same"):
        return self.keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=False,
            kernel_regularizer=self.regularizer(),
            name=name,
        )(x)

    def bn(self, x, name):
        return self.keras.layers.BatchNormalization(
            axis=BN_AXIS,
            epsilon=BN_EPSILON,
            gamma_regularizer=self.regularizer(),
            beta_regularizer=self.regularizer(),
            name=name,
        )(x)

    def relu(self, x, name):
        return self.keras.layers.ReLU(name=name)(x)

    def dropout(self, x, name):
        if not self.dropout_rate:
            return x
        return self.keras.layers.Dropout(self.dropout_rate, name=name)(x)


def imagenet_stem(x, filters, options):
    """Apply the ImageNet stem: 7x7/2 convolution, BN, ReLU, 3x3/2 max pooling; output stride 4.

    Both stride-2 layers use explicit symmetric zero padding (3 and 1 pixels), as keras.applications
    does, instead of `padding="same"`, which pads asymmetrically on even input sizes.
    """
    layers = options.keras.layers
    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(x)
    x = options.conv(x, filters, 7, strides=2, padding="valid", name="conv1_conv")
    x = options.bn(x, name="conv1_bn")
    x = options.relu(x, name="conv1_relu")
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="pool1")(x)


def cifar_stem(x, filters, options):
    """Apply the CIFAR stem: one 3x3 convolution at stride 1, with no normalization after it."""
    return options.conv(x, filters, 3, name="conv1_conv")


def dense_layer(x, growth_rate, bottleneck, name, options):
    """Apply one dense layer and concatenate its `growth_rate` new channels to its input.

    Order: BN-ReLU-Conv1x1(4 * growth_rate) (bottleneck only), then BN-ReLU-Conv3x3(growth_rate).
    """
    y = options.bn(x, name=f"{name}_0_bn")
    y = options.relu(y, name=f"{name}_0_relu")
    if bottleneck:
        y = options.conv(y, 4 * growth_rate, 1, name=f"{name}_1_conv")
        y = options.dropout(y, name=f"{name}_1_drop")
        y = options.bn(y, name=f"{name}_1_bn")
        y = options.relu(y, name=f"{name}_1_relu")
    y = options.conv(y, growth_rate, 3, name=f"{name}_2_conv")
    y = options.dropout(y, name=f"{name}_2_drop")
    return options.keras.layers.Concatenate(axis=BN_AXIS, name=f"{name}_concat")([x, y])


def dense_block(x, num_layers, growth_rate, bottleneck, name, options):
    """Apply `num_layers` dense layers named `{name}_block1` to `{name}_block{num_layers}`."""
    for i in range(num_layers):
        x = dense_layer(x, growth_rate, bottleneck, name=f"{name}_block{i + 1}", options=options)
    return x


def transition(x, compression, name, options):
    """Apply BN-ReLU-Conv1x1(floor(compression * channels))-AvgPool2x2 between two dense blocks."""
    channels = x.shape[BN_AXIS]
    x = options.bn(x, name=f"{name}_bn")
    x = options.relu(x, name=f"{name}_relu")
    x = options.conv(x, int(channels * compression), 1, name=f"{name}_conv")
    x = options.dropout(x, name=f"{name}_drop")
    return options.keras.layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def _classifier_dtype(keras):
    """Return "float32" under a mixed precision policy, so the softmax and loss run in float32; else None."""
    policy = keras.mixed_precision.global_policy()
    if policy.compute_dtype != policy.variable_dtype:
        return "float32"
    return None


def head(x, include_top, pooling, classes, classifier_activation, options):
    """Apply the final BN-ReLU, then global pooling and the classifier when requested.

    With `include_top=False` and `pooling=None` the output is the activated feature map of the last
    dense block.
    """
    layers = options.keras.layers
    x = options.bn(x, name="bn")
    x = options.relu(x, name="relu")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_regularizer=options.regularizer(),
            bias_regularizer=options.regularizer(),
            dtype=_classifier_dtype(options.keras),
            name="predictions",
        )(x)
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


# Memory-efficient dense layers.
#
# A dense layer's concatenation, BN and ReLU outputs have as many channels as all earlier layers of
# the block together, so keeping them for the backward pass costs memory quadratic in the block's
# depth. `RecomputedDenseLayer` keeps only its inputs (the block input and each earlier layer's new
# features, which the block keeps anyway) and recomputes concatenation-BN-ReLU-convolution inside
# the gradient with `tf.recompute_grad`.

_RECOMPUTED_LAYER_CLASSES = {}
RECOMPUTED_LAYER_CLASS_NAME = "RecomputedDenseLayer"


def recomputed_dense_layer_class(keras):
    """Return the `RecomputedDenseLayer` class for the `keras` module, creating it once per module.

    The class is registered as `keras_densenet>RecomputedDenseLayer` with that module's
    `register_keras_serializable`, so saved models load after this function ran once in the process;
    `custom_objects(keras)` returns the mapping for an explicit `custom_objects=` argument.
    """
    key = keras.__name__
    if key not in _RECOMPUTED_LAYER_CLASSES:
        _RECOMPUTED_LAYER_CLASSES[key] = _define_recomputed_dense_layer(keras)
    return _RECOMPUTED_LAYER_CLASSES[key]


def custom_objects(keras=None):
    """Return the `custom_objects` mapping that loading a memory-efficient model needs."""
    if keras is None:
        import tf_keras as keras
    return {RECOMPUTED_LAYER_CLASS_NAME: recomputed_dense_layer_class(keras)}


def _define_recomputed_dense_layer(keras):
    import tensorflow as tf

    is_tf_keras = keras.__name__.startswith("tf_keras")

    @keras.utils.register_keras_serializable(package="keras_densenet", name=RECOMPUTED_LAYER_CLASS_NAME)
    class RecomputedDenseLayer(keras.layers.Layer):
        """Concatenation, BN, ReLU and convolution of one dense layer, recomputed during backprop.

        The layer takes the list of feature maps to concatenate and owns a `BatchNormalization` and
        a `Conv2D` with the standard names (`{prefix}_0_bn` and `conv_name`), so weights map by name
        to and from the standard model. In training it normalizes with the batch statistics inside
        the recomputed function and updates the moving statistics outside it, so the backward pass
        does not update them a second time.
        """

        def __init__(self, filters, kernel_size, prefix, conv_name, weight_decay=0.0, momentum=0.99, **kwargs):
            super().__init__(**kwargs)
            self.filters = filters
            self.kernel_size = kernel_size
            self.prefix = prefix
            self.conv_name = conv_name
            self.weight_decay = weight_decay
            self.momentum = momentum
            regularizer = keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None
            self.bn = keras.layers.BatchNormalization(
                axis=BN_AXIS,
                epsilon=BN_EPSILON,
                momentum=momentum,
                gamma_regularizer=regularizer,
                beta_regularizer=regularizer,
                name=f"{prefix}_0_bn",
            )
            self.conv = keras.layers.Conv2D(
                filters, kernel_size, padding="same", use_bias=False, kernel_regularizer=regularizer, name=conv_name
            )

        def build(self, input_shape):
            input_shape = _as_shape_list(input_shape)
            channels = sum(int(shape[-1]) for shape in input_shape)
            concat_shape = tuple(input_shape[0][:-1]) + (channels,)
            self.bn.build(concat_shape)
            self.conv.build(concat_shape)
            self.built = True

        def named_sublayers(self):
            """Return the BN and convolution layers keyed by their names."""
            return {self.bn.name: self.bn, self.conv.name: self.conv}

        def _normalize_and_convolve(self, x, mean, variance):
            y = tf.nn.batch_normalization(x, mean, variance, self.bn.beta, self.bn.gamma, BN_EPSILON)
            y = tf.nn.relu(y)
            return tf.nn.conv2d(y, self.conv.kernel, strides=1, padding="SAME")

        def call(self, inputs, training=None):
            # tf_keras passes a one-element input list as a bare tensor when it reloads a model.
            inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
            features = [tf.convert_to_tensor(x) for x in inputs]
            if training is None and is_tf_keras:
                training = keras.backend.learning_phase()
            if not training:
                x = tf.concat(features, axis=-1)
                return self._normalize_and_convolve(x, self.bn.moving_mean, self.bn.moving_variance)

            def forward(*maps):
                x = tf.concat(maps, axis=-1)
                mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
                return self._normalize_and_convolve(x, mean, variance), mean, variance

            outputs, mean, variance = tf.recompute_grad(forward)(*features)
            self._update_moving_statistics(features, tf.stop_gradient(mean), tf.stop_gradient(variance))
            return outputs

        def _update_moving_statistics(self, features, mean, variance):
            if is_tf_keras:
                # tf_keras's fused BatchNormalization keeps the unbiased (Bessel-corrected) batch variance.
                count = tf.cast(tf.reduce_prod(tf.shape(features[0])[:-1]), variance.dtype)
                variance = variance * count / tf.maximum(count - 1.0, 1.0)
            decay = 1.0 - self.momentum
            self.bn.moving_mean.assign(self.bn.moving_mean * self.momentum + mean * decay)
            self.bn.moving_variance.assign(self.bn.moving_variance * self.momentum + variance * decay)

        def compute_output_shape(self, input_shape):
            return tuple(_as_shape_list(input_shape)[0][:-1]) + (self.filters,)

        def get_config(self):
            config = super().get_config()
            config.update(
                filters=self.filters,
                kernel_size=self.kernel_size,
                prefix=self.prefix,
                conv_name=self.conv_name,
                weight_decay=self.weight_decay,
                momentum=self.momentum,
            )
            return config

    return RecomputedDenseLayer


def _as_shape_list(input_shape):
    """Return `input_shape` as a list of shapes, also when it is the single shape of a one-input list."""
    first = input_shape[0] if len(input_shape) else None
    if first is None or isinstance(first, int) or hasattr(first, "value"):
        return [tuple(input_shape)]
    return [tuple(shape) for shape in input_shape]


def memory_efficient_dense_block(x, num_layers, growth_rate, bottleneck, name, options):
    """Apply a dense block whose concatenation-BN-ReLU-convolution steps are recomputed in backprop.

    Each dense layer gets the list of earlier feature maps instead of their concatenation. The
    block's only `Concatenate` layer, named after its last dense layer, builds the block output.
    Layer names otherwise follow the standard scheme, with one `conv{s}_block{i}_recompute` wrapper
    per dense layer owning `_0_bn` and the first convolution.
    """
    layer_class = recomputed_dense_layer_class(options.keras)
    features = [x]
    for i in range(num_layers):
        prefix = f"{name}_block{i + 1}"
        if bottleneck:
            y = layer_class(
                4 * growth_rate, 1, prefix, f"{prefix}_1_conv", weight_decay=options.weight_decay, name=f"{prefix}_recompute"
            )(features)
            y = options.dropout(y, name=f"{prefix}_1_drop")
            y = options.bn(y, name=f"{prefix}_1_bn")
            y = options.relu(y, name=f"{prefix}_1_relu")
            y = options.conv(y, growth_rate, 3, name=f"{prefix}_2_conv")
        else:
            y = layer_class(
                growth_rate, 3, prefix, f"{prefix}_2_conv", weight_decay=options.weight_decay, name=f"{prefix}_recompute"
            )(features)
        y = options.dropout(y, name=f"{prefix}_2_drop")
        features.append(y)
    return options.keras.layers.Concatenate(axis=BN_AXIS, name=f"{name}_block{num_layers}_concat")(features)
