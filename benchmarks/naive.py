"""A naive DenseNet-BC builder, the reference that the throughput benchmark compares against.

It builds the same architecture as `keras_densenet.DenseNet`, with the same layers, shapes and
parameter count, the way a first implementation often does. Its layers have no names, the stride-2
stem layers use `padding="same"` instead of explicit symmetric padding, activations are
`Activation("relu")` layers, and each concatenation is `tf.concat` inside a `Lambda` layer.
"""

import tensorflow as tf
import tf_keras

import keras_densenet
from keras_densenet.model import specs


def _bn_relu_conv(x, filters, kernel_size):
    x = tf_keras.layers.BatchNormalization(epsilon=1.001e-5)(x)
    x = tf_keras.layers.Activation("relu")(x)
    return tf_keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False)(x)


def naive_densenet(variant, input_shape, classes):
    """Build a tf_keras DenseNet-BC the straightforward way.

    Args:
        variant: A name from `keras_densenet.VARIANTS` or a `DenseNetSpec`; bottleneck variants only.
        input_shape: `(height, width, channels)` of the input images.
        classes: Number of classes of the softmax classifier.

    Returns:
        An uncompiled functional tf_keras model with as many weights as
        `keras_densenet.DenseNet(variant, input_shape=input_shape, classes=classes)`.

    Raises:
        ValueError: on an unknown variant or a variant without bottleneck layers.
    """
    spec = keras_densenet.get_spec(variant)
    if not spec.bottleneck:
        raise ValueError(
            f"`variant` must be a DenseNet-BC variant (with bottleneck layers). Received: variant={spec.name!r}"
        )
    inputs = tf_keras.Input(shape=input_shape)
    if spec.stem == specs.IMAGENET_STEM:
        x = tf_keras.layers.Conv2D(spec.initial_features, 7, strides=2, padding="same", use_bias=False)(inputs)
        x = tf_keras.layers.BatchNormalization(epsilon=1.001e-5)(x)
        x = tf_keras.layers.Activation("relu")(x)
        x = tf_keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    else:
        x = tf_keras.layers.Conv2D(spec.initial_features, 3, padding="same", use_bias=False)(inputs)

    for index, num_layers in enumerate(spec.blocks):
        for _ in range(num_layers):
            y = _bn_relu_conv(x, 4 * spec.growth_rate, 1)
            y = _bn_relu_conv(y, spec.growth_rate, 3)
            x = tf_keras.layers.Lambda(lambda tensors: tf.concat(tensors, axis=-1))([x, y])
        if index != len(spec.blocks) - 1:
            x = _bn_relu_conv(x, int(x.shape[-1] * spec.compression), 1)
            x = tf_keras.layers.AveragePooling2D(2)(x)

    x = tf_keras.layers.BatchNormalization(epsilon=1.001e-5)(x)
    x = tf_keras.layers.Activation("relu")(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf_keras.layers.Dense(classes, activation="softmax")(x)
    return tf_keras.Model(inputs, outputs)
