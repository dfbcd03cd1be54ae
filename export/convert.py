"""Conversion of tf_keras models to float32, float16 and full-integer int8 `.tflite` files."""

import itertools
import os

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from keras_densenet.utils import files

QUANTIZATION_TYPES = ("float32", "float16", "int8")
DEFAULT_CALIBRATION_BATCHES = 100


def is_qat_model(model):
    """Return whether `model` contains tfmot `QuantizeWrapper` layers, as `quantize_model` output does."""
    return any(isinstance(layer, tfmot.quantization.keras.QuantizeWrapper) for layer in model.layers)


def _images_of(batch):
    """Return the float32 images of one batch, which may be an `(images, labels)` pair."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("`representative_dataset` yielded an empty tuple. Received: batch=()")
        batch = batch[0]
    if isinstance(batch, dict):
        raise ValueError(
            "`representative_dataset` must yield image arrays or (images, labels) pairs, not dicts. "
            f"Received: batch with keys {sorted(batch)}"
        )
    return np.asarray(batch, dtype=np.float32)


def _calibration_images(representative_dataset, num_batches, input_shape):
    """Read up to `num_batches` batches and return them as a list of float32 arrays of images."""
    batches = []
    for batch in itertools.islice(iter(representative_dataset), num_batches):
        images = _images_of(batch)
        if images.ndim == len(input_shape) - 1:
            images = images[np.newaxis]
        expected = tuple(input_shape[1:])
        matches = len(images.shape) == len(input_shape) and all(
            d is None or d == s for d, s in zip(expected, images.shape[1:])
        )
        if not matches:
            raise ValueError(
                f"`representative_dataset` must yield batches of images of shape (batch, *{expected}). "
                f"Received: a batch of shape {images.shape}"
            )
        if len(images):
            batches.append(images)
    if not batches:
        raise ValueError(
            "`representative_dataset` yielded no images; pass an iterable or tf.data.Dataset of float32 "
            "image batches. Received: representative_dataset=empty"
        )
    return batches


def _representative_generator(batches):
    def generate():
        for images in batches:
            for image in images:  # One image per call, so the calibration batch size is always 1.
                yield [image[np.newaxis]]

    return generate


def _make_converter(model, quantization, representative_dataset, num_calibration_batches):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        if representative_dataset is not None:
            batches = _calibration_images(representative_dataset, num_calibration_batches, model.input_shape)
        else:
            # NOTE: TensorFlow 2.21's TFLiteConverter checks for a representative dataset before it
            # has the graph that shows the model is QAT-trained, so it rejects a QAT model without
            # one. A QAT model takes every range from its fake-quant ops, so one zero image only
            # passes that check.
            shape = [1 if d is None else d for d in model.input_shape]
            batches = [np.zeros(shape, np.float32)]
        converter.representative_dataset = _representative_generator(batches)
    return converter


def convert(
    model,
    output_path,
    quantization="float32",
    representative_dataset=None,
    num_calibration_batches=DEFAULT_CALIBRATION_BATCHES,
):
    """Convert a tf_keras model to a `.tflite` file, written atomically.

    Args:
        model: A tf_keras model, float or from `quantize_model` (QAT).
        output_path: Destination `.tflite` file. Its folder is created when missing. On any error
            nothing is written and an existing file stays as it was.
        quantization: One of `QUANTIZATION_TYPES`. `"float32"` converts the model as it is.
            `"float16"` stores the weights as float16 and computes in float32. `"int8"` makes a
            full-integer model with int8 input and output and only int8 builtin ops.
        representative_dataset: For `"int8"` only: an iterable or `tf.data.Dataset` of float32
            image batches, or of `(images, labels)` pairs, preprocessed as for the model. Required
            for a float model, which is then calibrated by post-training quantization. Optional for
            a QAT model, whose ranges come from its fake-quant ops.
        num_calibration_batches: Maximum number of batches read from `representative_dataset`.

    Returns:
        `output_path` as a string.

    Raises:
        ValueError: on an unknown `quantization`, a float model converted to int8 without a
            `representative_dataset`, or a `representative_dataset` that yields no images or
            images of the wrong shape.
    """
    if quantization not in QUANTIZATION_TYPES:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATION_TYPES}. Received: quantization={quantization!r}"
        )
    if not isinstance(num_calibration_batches, int) or isinstance(num_calibration_batches, bool) or num_calibration_batches < 1:
        raise ValueError(
            "`num_calibration_batches` must be a positive integer. "
            f"Received: num_calibration_batches={num_calibration_batches!r}"
        )
    if quantization == "int8" and representative_dataset is None and not is_qat_model(model):
        raise ValueError(
            "`representative_dataset` is required to convert a float model to int8: pass float32 image "
            "batches for calibration, or convert a QAT model from quantize_model. "
            "Received: representative_dataset=None"
        )
    output_path = os.fspath(output_path)

    converter = _make_converter(model, quantization, representative_dataset, num_calibration_batches)
    flatbuffer = converter.convert()
    files.write_bytes_atomic(output_path, flatbuffer)
    return output_path
