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
            `weight_decay / 2 * sum(w ** 2)` to the loss, so its gradient gains `weight_decay * w`
            exactly as SGD weight decay in the paper's Torch code does. 0 disables it.
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
            name="predictions",
        )(x)
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x
