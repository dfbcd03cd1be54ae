"""Runtime checks: the Keras version a model belongs to, and the features only tf_keras supports."""

TF_KERAS_FEATURES = {
    "qat": "quantization-aware training with tensorflow-model-optimization 0.8.1, which annotates only tf_keras models",
    "multi_worker": "MultiWorkerMirroredStrategy training, under which Keras 3 `model.fit` fails "
    "(keras-team/keras#20585)",
}


def is_tf_keras_model(model):
    """Return whether `model` is a tf_keras (Keras 2) model rather than a Keras 3 one."""
    import tf_keras

    return isinstance(model, tf_keras.Model)


def require_tf_keras(model, feature):
    """Raise a `ValueError` naming the tf_keras path when `model` is not a tf_keras model.

    Args:
        model: The model about to be used.
        feature: A key of `TF_KERAS_FEATURES`: `"qat"` or `"multi_worker"`.

    Raises:
        ValueError: if `feature` is unknown, or if `model` is a Keras 3 model.
    """
    if feature not in TF_KERAS_FEATURES:
        raise ValueError(f"`feature` must be one of {sorted(TF_KERAS_FEATURES)}. Received: feature={feature!r}")
    if not is_tf_keras_model(model):
        raise ValueError(
            f"Keras 3 models do not support {TF_KERAS_FEATURES[feature]}. Build the model with the tf_keras "
            "path instead: keras_densenet.DenseNet(..., keras_module=None), and move Keras 3 weights over with "
            f"keras_densenet.transfer_weights(source, target). Received: model={type(model).__module__}.{type(model).__name__}"
        )


def require_standard_layers(model, feature):
    """Raise a `ValueError` when `model` contains memory-efficient `RecomputedDenseLayer` wrappers.

    Args:
        model: The model about to be used.
        feature: A short description of the operation, used in the message (for example `"QAT"`).
    """
    from keras_densenet.model.layers import RECOMPUTED_LAYER_CLASS_NAME

    wrapped = [layer.name for layer in model.layers if type(layer).__name__ == RECOMPUTED_LAYER_CLASS_NAME]
    if wrapped:
        raise ValueError(
            f"{feature} needs the standard layers, but the model was built with memory_efficient=True "
            f"({len(wrapped)} RecomputedDenseLayer wrappers, first {wrapped[0]!r}). Build it with "
            "memory_efficient=False and copy the weights with keras_densenet.transfer_weights(source, target). "
            f"Received: model={model.name!r}"
        )
