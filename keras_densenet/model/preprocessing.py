"""Input preprocessing of keras.applications' DenseNet ImageNet weights, as a function and as layers.

The weights expect RGB pixels in [0, 255] scaled to [0, 1] and then standardized per channel with
the ImageNet mean and standard deviation ("torch" mode of keras.applications).
"""

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_input(x):
    """Scale RGB pixels in [0, 255] as `keras.applications.densenet.preprocess_input` does.

    Args:
        x: A NumPy array or a tensor of shape `(..., 3)`, channels last.

    Returns:
        `(x / 255 - mean) / std` per channel, as float32 (a new array for NumPy input, a tensor
        otherwise).

    Raises:
        ValueError: if the last axis does not have 3 channels.
    """
    channels = x.shape[-1]
    if channels != len(IMAGENET_MEAN):
        raise ValueError(
            f"`x` must have {len(IMAGENET_MEAN)} channels (RGB) on its last axis. Received: x.shape={tuple(x.shape)}"
        )
    mean = np.asarray(IMAGENET_MEAN, dtype="float32")
    std = np.asarray(IMAGENET_STD, dtype="float32")
    if isinstance(x, np.ndarray):
        return (x.astype("float32") / np.float32(255.0) - mean) / std
    import tensorflow as tf

    x = tf.cast(x, tf.float32)
    return (x / 255.0 - mean) / std


def preprocessing_layers(x, keras_module=None):
    """Apply `preprocess_input` to the Keras tensor `x` with two built-in layers.

    The layers are `Rescaling(1 / 255)` named `rescaling` and `Normalization` with the fixed
    ImageNet mean and variance, named `normalization`. Both serialize with every Keras format and
    hold no trainable weights.

    Args:
        x: A Keras tensor with 3 channels.
        keras_module: `tf_keras` (default) or Keras 3 `keras`; must match the module of `x`.

    Returns:
        The preprocessed Keras tensor.
    """
    if keras_module is None:
        import tf_keras as keras_module

    layers = keras_module.layers
    x = layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
    variance = [s * s for s in IMAGENET_STD]
    return layers.Normalization(axis=-1, mean=list(IMAGENET_MEAN), variance=variance, name="normalization")(x)
