"""Weights by layer name: keras.applications DenseNet HDF5 files and the published ImageNet weights.

keras.applications stores DenseNet weights in the legacy Keras HDF5 layout: the attribute
`layer_names` lists the layers, and each layer's group lists its arrays in the attribute
`weight_names`, in `layer.get_weights()` order. That layout is what the published ImageNet files,
tf_keras `save_weights("x.h5")` and `model.save("x.h5")` (under a `model_weights` group) write.
tf_keras.applications names the stem `conv1/conv`, `conv1/bn`, `conv1/relu` and Keras 3 names it
`conv1_conv`, `conv1_bn`, `conv1_relu`; `normalize_layer_name` maps both to this package's names.
"""

import os
import re

import numpy as np

from keras_densenet.model import specs

WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"

# MD5 hashes of the published files, as keras.applications (Keras 3.15) checks them.
IMAGENET_WEIGHTS = {
    ("densenet121", True): ("densenet121_weights_tf_dim_ordering_tf_kernels.h5", "9d60b8095a5708f2dcce2bca79d332c7"),
    ("densenet169", True): ("densenet169_weights_tf_dim_ordering_tf_kernels.h5", "d699b8f76981ab1b30698df4c175e90b"),
    ("densenet201", True): ("densenet201_weights_tf_dim_ordering_tf_kernels.h5", "1ceb130c1ea1b78c3bf6114dbdfd8807"),
    ("densenet121", False): (
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "30ee3e1110167f948a6b9946edeeb738",
    ),
    ("densenet169", False): (
        "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "b8c4d4c20dd625c148057b9ff1c1176b",
    ),
    ("densenet201", False): (
        "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "c13680b51ded0fb44dff2d8f86ac8bb1",
    ),
}
IMAGENET_CLASSES = 1000
IMAGENET_CHANNELS = 3

_DENSE_LAYER_NAME = re.compile(r"^conv(\d+)_block(\d+)_")


def normalize_layer_name(name):
    """Return `name` in this package's scheme: tf_keras's `conv1/conv` becomes `conv1_conv`."""
    return name.replace("/", "_")


def _decode(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_weight_file(path):
    """Read the weights of a legacy Keras HDF5 file, keyed by normalized layer name.

    Args:
        path: A `.h5` file written by `save_weights("x.h5")` (tf_keras), by `model.save("x.h5")`
            (either Keras) or published by keras.applications.

    Returns:
        A dict from layer name (see `normalize_layer_name`) to the list of that layer's arrays in
        `layer.get_weights()` order. Layers without weights are left out.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if `path` is not a readable HDF5 file or not in the legacy Keras layout.
    """
    import h5py  # A dependency of both Keras versions.

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"`weights` file not found. Received: weights={path!r}")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(
            f"`weights` is not a readable HDF5 weights file ({error}). Pass a keras.applications DenseNet "
            f"`.h5` file. Received: weights={path!r}"
        ) from None
    with handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in group.attrs:
            raise ValueError(
                "`weights` is an HDF5 file without the legacy Keras `layer_names` layout, for example a "
                "Keras 3 `.weights.h5` file, which stores no layer names. Load it with `model.load_weights` "
                f"into a model built the same way, or save it with `save_weights('x.h5')` from tf_keras. "
                f"Received: weights={path!r}"
            )
        weights = {}
        for raw_name in group.attrs["layer_names"]:
            name = _decode(raw_name)
            layer_group = group[name]
            arrays = [np.asarray(layer_group[_decode(w)]) for w in layer_group.attrs.get("weight_names", [])]
            if arrays:
                weights[normalize_layer_name(name)] = arrays
    return weights


def infer_blocks(layer_names):
    """Return the number of dense layers per block that `layer_names` contain, as a tuple."""
    counts = {}
    for name in layer_names:
        match = _DENSE_LAYER_NAME.match(name)
        if match:
            stage, index = int(match.group(1)), int(match.group(2))
            counts[stage] = max(counts.get(stage, 0), index)
    return tuple(counts[stage] for stage in sorted(counts))


def _variant_for_blocks(blocks):
    names = [spec.name for spec in specs.VARIANTS.values() if spec.blocks == blocks]
    return names[0] if names else None


def weight_layers(model):
    """Return the layers of `model` that own weights, keyed by `normalize_layer_name(layer.name)`.

    Layers of a memory-efficient model keep their standard names although they live inside a
    recomputation wrapper, so both kinds of model map to the same names. keras.applications models
    map too.
    """
    layers = {}
    for layer in model.layers:
        inner = getattr(layer, "named_sublayers", None)
        if inner is not None:
            layers.update(inner())
        elif layer.weights:
            layers[normalize_layer_name(layer.name)] = layer
    return layers


def load_weights_by_name(model, path, variant_name=None):
    """Load the weights of a legacy Keras HDF5 file into `model`, matching layers by name.

    Every layer of `model` that owns weights must find a layer of the same name and equal weight
    shapes in the file. Extra layers in the file are ignored, so a file with the classifier loads
    into a model built with `include_top=False`.

    Args:
        model: A model from `DenseNet` (tf_keras or Keras 3).
        path: A file `read_weight_file` accepts.
        variant_name: Variant of `model`, used only in error messages.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if the file is unreadable, misses a layer of `model` or has another shape for it.
            The message names the variant the file was made for when its block sizes match one.
    """
    stored = read_weight_file(path)
    target = weight_layers(model)
    variant_name = variant_name or model.name
    file_variant = _variant_for_blocks(infer_blocks(stored))
    hint = (
        f" The file's dense blocks {infer_blocks(stored)} are those of {file_variant!r}; build that variant instead."
        if file_variant and file_variant != variant_name
        else ""
    )

    assignments = []
    for name, layer in target.items():
        if name not in stored:
            if name == "predictions":
                raise ValueError(
                    "`weights` has no classifier layer `predictions`. Build the model with include_top=False "
                    f"or pass a file saved with the top. Received: weights={os.fspath(path)!r}"
                )
            raise ValueError(
                f"`weights` does not match {variant_name}: the file has no layer {name!r}.{hint} "
                f"Received: weights={os.fspath(path)!r}"
            )
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(a.shape) for a in stored[name]]
        if expected != found:
            raise ValueError(
                f"`weights` does not match {variant_name}: layer {name!r} needs weight shapes {expected} but "
                f"the file has {found}.{hint or _shape_hint(name, expected, found)} "
                f"Received: weights={os.fspath(path)!r}"
            )
        assignments.append((layer, stored[name]))

    for layer, arrays in assignments:
        layer.set_weights(arrays)


def _shape_hint(name, expected, found):
    if name == "conv1_conv" and expected[0][:2] == found[0][:2]:
        return f" The file expects {found[0][2]}-channel input; build the model with that many channels."
    if name == "predictions":
        return f" The file's classifier has {found[0][-1]} classes; pass classes={found[0][-1]}."
    return ""


def check_imagenet_arguments(variant, include_top, classes, channels):
    """Raise a `ValueError` when `weights="imagenet"` cannot apply to the requested model."""
    available = sorted({name for name, _ in IMAGENET_WEIGHTS})
    if variant not in available:
        raise ValueError(
            f"`weights='imagenet'` exists only for {available}; use weights=None or a weights file for "
            f"{variant}. Received: variant={variant!r}"
        )
    if include_top and classes != IMAGENET_CLASSES:
        raise ValueError(
            f"`classes` must be {IMAGENET_CLASSES} with weights='imagenet' and include_top=True; to train "
            f"another classifier on ImageNet features, pass include_top=False. Received: classes={classes}"
        )
    if channels != IMAGENET_CHANNELS:
        raise ValueError(
            f"ImageNet weights need {IMAGENET_CHANNELS}-channel (RGB) input; pass input_shape=(height, width, 3). "
            f"Received: channels={channels}"
        )


def fetch_imagenet_weights(variant, include_top, cache_dir=None, keras_module=None):
    """Return the local path of keras.applications' ImageNet weights for `variant`, downloading them if needed.

    `keras.utils.get_file` looks for the file in `<cache_dir>/models/` (default `~/.keras/models/`,
    or `$KERAS_HOME/models/`), checks its published MD5 hash and downloads it when it is missing or
    its hash differs.

    Args:
        variant: `"densenet121"`, `"densenet169"` or `"densenet201"`.
        include_top: Whether to fetch the file with the classifier.
        cache_dir: Directory that contains `models/`; `None` uses Keras's default.
        keras_module: The Keras module whose `utils.get_file` runs; `None` uses tf_keras.

    Raises:
        ValueError: if no published file exists for `variant`.
        FileNotFoundError: if the file is not cached and the download fails, for example offline.
            The message gives the URL and the path to copy the file to.
    """
    key = (variant, bool(include_top))
    if key not in IMAGENET_WEIGHTS:
        check_imagenet_arguments(variant, include_top, IMAGENET_CLASSES, IMAGENET_CHANNELS)
    file_name, file_hash = IMAGENET_WEIGHTS[key]
    if keras_module is None:
        import tf_keras as keras_module

    cache_root = cache_dir or os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    destination = os.path.join(cache_root, "models", file_name)
    url = WEIGHTS_BASE_URL + file_name
    try:
        # NOTE: the download has no timeout of its own, so behind a firewall that drops packets
        # (rather than refusing them) it waits for the operating system's connect timeout.
        return keras_module.utils.get_file(
            file_name, url, cache_subdir="models", file_hash=file_hash, cache_dir=cache_dir
        )
    except Exception as error:  # get_file raises a bare Exception on network errors.
        raise FileNotFoundError(
            f"Could not download the ImageNet weights of {variant} ({error}). Without a network, download "
            f"{url} elsewhere and copy it to {destination}, or pass the file's path as `weights`. "
            f"Received: weights='imagenet'"
        ) from None
