"""The sidecar JSON next to each `.tflite` file: input size, normalization and label names.

For `model_qat_int8.tflite` the sidecar is `model_qat_int8.json`. It states whether the model
normalizes its input itself (`"normalization": "baked"`, input = pixels) or expects the caller to
apply `(pixels / pixel_scale - mean) / std` first (`"normalization": "sidecar"`), so a deployment
needs no other file to feed the model.
"""

import json
import os

import numpy as np

from keras_densenet.utils import files

NORMALIZATION_MODES = ("sidecar", "baked")
_REQUIRED_KEYS = ("normalization", "mean", "std", "pixel_scale", "input_shape", "label_names")


def sidecar_path(tflite_path):
    """Return the sidecar path of a `.tflite` path: the same name with `.json` for `.tflite`."""
    root, _ = os.path.splitext(os.fspath(tflite_path))
    return root + ".json"


def make_sidecar(normalization, mean, std, input_shape, label_names, pixel_scale=255.0, **extra):
    """Return the sidecar dict of one export.

    Args:
        normalization: `"sidecar"` (the caller normalizes) or `"baked"` (the model normalizes).
        mean: Per-channel mean of images scaled to [0, 1].
        std: Per-channel standard deviation of images scaled to [0, 1].
        input_shape: `(height, width, channels)` of one input image.
        label_names: Class name of each output index.
        pixel_scale: Value of a full-intensity pixel.
        **extra: More JSON-serializable fields to store, such as the format and the I/O types.

    Raises:
        ValueError: on an unknown `normalization`.
    """
    if normalization not in NORMALIZATION_MODES:
        raise ValueError(
            f"`normalization` must be one of {NORMALIZATION_MODES}. Received: normalization={normalization!r}"
        )
    return {
        "normalization": normalization,
        "mean": [float(value) for value in mean],
        "std": [float(value) for value in std],
        "pixel_scale": float(pixel_scale),
        "input_shape": [int(value) for value in input_shape],
        "input_size": [int(value) for value in input_shape[:2]],
        "label_names": [str(name) for name in label_names],
        **extra,
    }


def write_sidecar(tflite_path, sidecar):
    """Write `sidecar` (from `make_sidecar`) next to `tflite_path`, atomically, and return its path."""
    path = sidecar_path(tflite_path)
    files.write_json_atomic(path, sidecar)
    return path


def read_sidecar(tflite_path):
    """Read and check the sidecar of `tflite_path`.

    Raises:
        ValueError: if the sidecar is missing, not JSON, or lacks a required field.
    """
    path = sidecar_path(tflite_path)
    if not os.path.isfile(path):
        raise ValueError(
            f"`tflite_path` has no sidecar {os.path.basename(path)} with its input normalization; "
            f"re-export it with densenet-export. Received: tflite_path={os.fspath(tflite_path)!r}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            sidecar = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"The sidecar is not valid JSON ({error}). Received: path={path!r}") from error
    missing = [key for key in _REQUIRED_KEYS if not isinstance(sidecar, dict) or key not in sidecar]
    if missing or sidecar["normalization"] not in NORMALIZATION_MODES:
        raise ValueError(
            f"The sidecar must have the fields {_REQUIRED_KEYS} and a normalization in {NORMALIZATION_MODES}; "
            f"re-export the model. Received: path={path!r}, missing={missing}"
        )
    return sidecar


def model_inputs(sidecar, pixels):
    """Turn raw pixels into the float inputs that the model of `sidecar` expects.

    Args:
        sidecar: A dict from `read_sidecar`.
        pixels: Real-valued array `(num_images, height, width, channels)` in [0, pixel_scale].

    Returns:
        Float32 pixels for a baked model, or `(pixels / pixel_scale - mean) / std` otherwise.

    Raises:
        ValueError: if `pixels` is not a real-valued array of the sidecar's image shape.
    """
    pixels = np.asarray(pixels)
    if not (np.issubdtype(pixels.dtype, np.floating) or np.issubdtype(pixels.dtype, np.integer)):
        raise ValueError(f"`pixels` must be a real-valued array. Received: pixels.dtype={pixels.dtype}")
    expected = tuple(sidecar["input_shape"])
    if pixels.ndim != 4 or pixels.shape[1:] != expected:
        raise ValueError(f"`pixels` must have shape (num_images, *{expected}). Received: pixels.shape={pixels.shape}")
    pixels = pixels.astype(np.float32)
    if sidecar["normalization"] == "baked":
        return pixels
    mean = np.asarray(sidecar["mean"], np.float32)
    std = np.asarray(sidecar["std"], np.float32)
    return (pixels / np.float32(sidecar["pixel_scale"]) - mean) / std


def pixels_from_normalized(images, mean, std, pixel_scale=255.0):
    """Invert the normalization of `keras_densenet.data.make_dataset`: return pixels in [0, pixel_scale]."""
    images = np.asarray(images, np.float32)
    return (images * np.asarray(std, np.float32) + np.asarray(mean, np.float32)) * np.float32(pixel_scale)
