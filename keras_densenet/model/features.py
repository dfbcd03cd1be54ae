"""Per-stage feature maps of a DenseNet, for use as a detection or segmentation backbone."""

from keras_densenet.model import specs
from keras_densenet.model import weights as weight_files


def stage_layer_names(model):
    """Return the names of the layers whose outputs are the stage feature maps, shallowest first.

    Each stage's map is the BN-ReLU output at the end of its dense block, before the transition
    downsamples it: `pool2_relu`, `pool3_relu`, ... and the head's `relu` for the last block. With
    the ImageNet stem these have strides 4, 8, 16 and 32; with the CIFAR stem 1, 2 and 4.

    Raises:
        ValueError: if `model` has no `relu` layer, for example because it is not from `DenseNet`.
    """
    names = {layer.name for layer in model.layers}
    if "relu" not in names:
        raise ValueError(
            "`model` must be a model from keras_densenet.DenseNet, which ends its last block with a layer "
            f"named 'relu'. Received: model={model.name!r}"
        )
    stages = []
    stage = 2
    while f"pool{stage}_relu" in names:
        stages.append(f"pool{stage}_relu")
        stage += 1
    return stages + ["relu"]


def feature_extractor(model, name=None):
    """Return a functional model with the same input as `model` and one output per stage.

    Args:
        model: A model from `DenseNet` (tf_keras or Keras 3, any `include_top`). The new model
            shares its layers and weights.
        name: Name of the new model; defaults to `"{model.name}_features"`.

    Returns:
        A model whose outputs are listed in `stage_layer_names(model)` order.
    """
    outputs = [model.get_layer(layer_name).output for layer_name in stage_layer_names(model)]
    return type(model)(model.inputs, outputs, name=name or f"{model.name}_features")


def stage_strides(variant):
    """Return the stride of each stage feature map of `variant` relative to the input."""
    spec = specs.get_spec(variant)
    first = 4 if spec.stem == specs.IMAGENET_STEM else 1
    return tuple(first * 2**index for index in range(len(spec.blocks)))


def transfer_weights(source, target):
    """Copy every weight of `source` into `target` by layer name, across Keras versions.

    Works between tf_keras and Keras 3 models and between standard and memory-efficient models of
    the same variant, because all of them keep the same layer names and weight shapes.

    Raises:
        ValueError: if `target` has a layer with weights that `source` lacks, or other shapes.
    """
    source_layers = weight_files.weight_layers(source)
    target_layers = weight_files.weight_layers(target)
    for layer_name, layer in target_layers.items():
        if layer_name not in source_layers:
            raise ValueError(
                f"`source` has no layer {layer_name!r} that `target` needs; build both from the same variant "
                f"with the same include_top. Received: source={source.name!r}"
            )
        arrays = source_layers[layer_name].get_weights()
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(a.shape) for a in arrays]
        if expected != found:
            raise ValueError(
                f"Layer {layer_name!r} has weight shapes {found} in `source` but {expected} in `target`; build "
                f"both with the same classes and input channels. Received: source={source.name!r}"
            )
        layer.set_weights(arrays)
