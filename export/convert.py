"""Conversion of tf_keras models to `.tflite` files in every standard LiteRT format.

Formats (`QUANTIZATION_TYPES`):

- `float32`: the model as it is.
- `float16`: float16 weights, float32 compute (the weights are dequantized when the model loads).
- `dynamic_int8`: int8 weights; activations are quantized on the fly at run time, and the input and
  output stay float32.
- `ptq_int8`: full-integer post-training quantization of a float model, calibrated on a
  representative dataset.
- `qat_int8`: full-integer conversion of a quantization-aware trained model from `quantize_model`,
  whose ranges come from its fake-quant ops.

`int8` is accepted as an alias of `qat_int8`.

Targets (`TARGETS`): `cpu` keeps the batch dimension dynamic, so the LiteRT interpreter can resize it.
`edgetpu` fixes the input shape to `[1, H, W, C]`, because the Edge TPU compiler maps only tensors
with static shapes, and accepts only the full-integer formats.
"""

import itertools
import os

import flatbuffers
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from ai_edge_litert import schema_py_generated as schema

from keras_densenet.utils import files

QUANTIZATION_TYPES = ("float32", "float16", "dynamic_int8", "ptq_int8", "qat_int8")
FORMAT_ALIASES = {"int8": "qat_int8"}
INTEGER_TYPES = ("ptq_int8", "qat_int8")
IO_TYPES = ("int8", "uint8", "float32")
TARGETS = ("cpu", "edgetpu")
DEFAULT_CALIBRATION_BATCHES = 100

_TF_IO_TYPES = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
_FILE_IDENTIFIER = b"TFL3"
# The converter starts every constant buffer on a 16-byte boundary (`force_align: 16` in the
# schema). The rewritten file keeps that, so kernels can read the weights in place.
_BUFFER_ALIGNMENT = 16


def canonical_format(quantization):
    """Return the name in `QUANTIZATION_TYPES` of `quantization`, resolving `FORMAT_ALIASES`.

    Raises:
        ValueError: if `quantization` is neither a format nor an alias.
    """
    if quantization in QUANTIZATION_TYPES:
        return quantization
    if isinstance(quantization, str) and quantization in FORMAT_ALIASES:
        return FORMAT_ALIASES[quantization]
    accepted = QUANTIZATION_TYPES + tuple(FORMAT_ALIASES)
    raise ValueError(
        f"`quantization` must be one of {accepted} (int8 is an alias of qat_int8). "
        f"Received: quantization={quantization!r}"
    )


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
    array = np.asarray(batch)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(
            "`representative_dataset` must yield real-valued image arrays (float or integer), "
            f"preprocessed as for the model. Received: a batch of dtype {array.dtype}"
        )
    return array.astype(np.float32)


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


def _static_input_shape(model):
    """Return `[1, H, W, C]` for an Edge TPU export, or raise when the model's image size is not fixed."""
    input_shape = list(model.input_shape)
    if any(d is None for d in input_shape[1:]):
        raise ValueError(
            "`target='edgetpu'` needs a model with a fixed input size, because the Edge TPU maps only "
            f"static shapes; build the model with a full `input_shape`. Received: input_shape={tuple(input_shape)}"
        )
    return [1, *input_shape[1:]]


def _base_converter(model, target):
    if target == "cpu":
        return tf.lite.TFLiteConverter.from_keras_model(model)
    # A concrete function traced for [1, H, W, C] gives every tensor a static shape; from_keras_model
    # would keep the batch dimension dynamic (shape signature -1).
    spec = tf.TensorSpec(_static_input_shape(model), tf.float32, name=model.input_names[0])
    function = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    return tf.lite.TFLiteConverter.from_concrete_functions([function], model)


def _make_converter(model, quantization, representative_dataset, num_calibration_batches, io_types, target,
                    per_channel):
    converter = _base_converter(model, target)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization in INTEGER_TYPES:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = _TF_IO_TYPES[io_types[0]]
        converter.inference_output_type = _TF_IO_TYPES[io_types[1]]
        # NOTE: a private attribute; TensorFlow 2.21 has no public switch for per-tensor weights.
        converter._experimental_disable_per_channel = not per_channel
        if representative_dataset is not None:
            batches = _calibration_images(representative_dataset, num_calibration_batches, model.input_shape)
        else:
            # NOTE: TensorFlow 2.21's TFLiteConverter checks for a representative dataset before it
            # has the graph that shows the model is QAT-trained, so it rejects a QAT model without
            # one. A QAT model takes every range from its fake-quant ops, so one zero image only
            # passes that check and changes no byte of the output.
            shape = [1 if d is None else d for d in model.input_shape]
            batches = [np.zeros(shape, np.float32)]
        converter.representative_dataset = _representative_generator(batches)
    return converter


def _check_io_type(name, value, quantization):
    if value is None:
        return "int8" if quantization in INTEGER_TYPES else "float32"
    if value not in IO_TYPES:
        raise ValueError(f"`{name}` must be one of {IO_TYPES}. Received: {name}={value!r}")
    if quantization not in INTEGER_TYPES and value != "float32":
        raise ValueError(
            f"`{name}` can be int8 or uint8 only for the full-integer formats {INTEGER_TYPES}; "
            f"{quantization} models take and return float32. Received: {name}={value!r}"
        )
    return value


class _AlignedBuffer:
    """Packs a `schema.BufferT` with its data on a `_BUFFER_ALIGNMENT`-byte boundary."""

    def __init__(self, buffer):
        self._buffer = buffer

    def Pack(self, builder):  # noqa: N802 (the flatbuffers object API's name)
        data = self._buffer.data
        vector = None
        if data is not None and len(data):
            array = np.asarray(data, dtype=np.uint8)
            builder.Prep(_BUFFER_ALIGNMENT, array.size)
            vector = builder.CreateNumpyVector(array)
        schema.BufferStart(builder)
        if vector is not None:
            schema.BufferAddData(builder, vector)
        if self._buffer.offset:
            schema.BufferAddOffset(builder, self._buffer.offset)
            schema.BufferAddSize(builder, self._buffer.size)
        return schema.BufferEnd(builder)


def strip_tensor_names(flatbuffer):
    """Return a `.tflite` flatbuffer without the names of its intermediate tensors.

    The converter names each tensor after the TensorFlow ops it was fused from, which takes 2% to
    10% of a small int8 file. The names of the model's inputs and outputs and the signatures stay,
    so `get_input_details`, `get_output_details` and `get_signature_runner` work as before. Only
    tools that show intermediate tensors (such as Netron) lose their names. A file whose buffers
    lie outside the flatbuffer (models over 2 GB) is returned unchanged.

    Args:
        flatbuffer: The bytes of a `.tflite` file.

    Returns:
        The bytes of the same model without intermediate tensor names.
    """
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    if any(buffer.offset for buffer in model.buffers or []):
        return bytes(flatbuffer)
    for subgraph in model.subgraphs:
        io_tensors = set(subgraph.inputs) | set(subgraph.outputs)
        for index, tensor in enumerate(subgraph.tensors):
            if index not in io_tensors:
                tensor.name = None
    model.buffers = [_AlignedBuffer(buffer) for buffer in model.buffers]
    builder = flatbuffers.Builder(len(flatbuffer))
    builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


def check_options(quantization, input_type=None, output_type=None, target="cpu"):
    """Check a combination of conversion options and return it with defaults filled in.

    Args:
        quantization: A name from `QUANTIZATION_TYPES` or `FORMAT_ALIASES`.
        input_type: `None` or one of `IO_TYPES`; `None` means int8 for the full-integer formats
            and float32 otherwise.
        output_type: As `input_type`.
        target: One of `TARGETS`.

    Returns:
        `(quantization, input_type, output_type, target)` with the canonical format name.

    Raises:
        ValueError: on an unknown value, an integer input or output type for a float or
            dynamic-range format, or the Edge TPU target with a format that is not full-integer.
    """
    quantization = canonical_format(quantization)
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}. Received: target={target!r}")
    if target == "edgetpu" and quantization not in INTEGER_TYPES:
        raise ValueError(
            f"`target='edgetpu'` needs a full-integer format {INTEGER_TYPES}, because the Edge TPU "
            f"executes only int8 and uint8 tensors and a {quantization} model would run on the CPU. "
            f"Received: quantization={quantization!r}"
        )
    input_type = _check_io_type("input_type", input_type, quantization)
    output_type = _check_io_type("output_type", output_type, quantization)
    return quantization, input_type, output_type, target


def convert(
    model,
    output_path,
    quantization="float32",
    representative_dataset=None,
    num_calibration_batches=DEFAULT_CALIBRATION_BATCHES,
    input_type=None,
    output_type=None,
    target="cpu",
    per_channel=True,
    keep_tensor_names=False,
):
    """Convert a tf_keras model to a `.tflite` file, written atomically.

    Args:
        model: A tf_keras model: a float model, or for `qat_int8` a model from `quantize_model`.
        output_path: Destination `.tflite` file. Its folder is created when missing. On any error
            nothing is written and an existing file stays as it was.
        quantization: A name from `QUANTIZATION_TYPES` (see the module docstring), or `"int8"`, an
            alias of `"qat_int8"`.
        representative_dataset: For `ptq_int8` (required) and `qat_int8` (optional; checked, then unused): an
            iterable or `tf.data.Dataset` of image batches, or of `(images, labels)` pairs,
            preprocessed exactly as the model's inputs.
        num_calibration_batches: Maximum number of batches read from `representative_dataset`.
        input_type: Type of the model's input tensor, one of `IO_TYPES`, for the full-integer
            formats; `None` means int8 for them and float32 otherwise. With int8 or uint8 the
            interpreter reports the tensor's scale and zero point.
        output_type: As `input_type`, for the output tensor.
        target: `"cpu"` (dynamic batch dimension) or `"edgetpu"` (static `[1, H, W, C]` input).
        per_channel: For the full-integer formats, quantize the kernels that the converter
            quantizes itself with one scale per output channel (True) or per tensor (False). For
            `qat_int8` pass the value given to `quantize_model`, whose fake-quant ops fix the rest.
        keep_tensor_names: Keep the names of intermediate tensors in the file, for inspection
            with tools such as Netron; by default `strip_tensor_names` removes them.

    Returns:
        `output_path` as a string.

    Raises:
        ValueError: as `check_options`; on `qat_int8` for a float model or `ptq_int8` for a QAT
            model; on `ptq_int8` without a `representative_dataset`; or on a
            `representative_dataset` that yields no images, images of the wrong shape, or values
            that are not real numbers.
    """
    quantization, input_type, output_type, target = check_options(quantization, input_type, output_type, target)
    for name, value in (("per_channel", per_channel), ("keep_tensor_names", keep_tensor_names)):
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")
    if not isinstance(num_calibration_batches, int) or isinstance(num_calibration_batches, bool) or num_calibration_batches < 1:
        raise ValueError(
            "`num_calibration_batches` must be a positive integer. "
            f"Received: num_calibration_batches={num_calibration_batches!r}"
        )
    qat = is_qat_model(model)
    if quantization == "qat_int8" and not qat:
        raise ValueError(
            "`quantization='qat_int8'` needs a QAT model from quantize_model; convert a float model with "
            "ptq_int8 and a representative dataset. Received: a model without QuantizeWrapper layers"
        )
    if quantization != "qat_int8" and qat:
        raise ValueError(
            f"A QAT model converts only with quantization='qat_int8', because its fake-quant ops fix "
            f"the int8 ranges. Received: quantization={quantization!r}"
        )
    if quantization == "ptq_int8" and representative_dataset is None:
        raise ValueError(
            "`representative_dataset` is required to convert a float model to ptq_int8: pass float32 image "
            "batches for calibration, or convert a QAT model from quantize_model with qat_int8. "
            "Received: representative_dataset=None"
        )
    output_path = os.fspath(output_path)

    converter = _make_converter(
        model, quantization, representative_dataset, num_calibration_batches, (input_type, output_type), target,
        per_channel,
    )
    flatbuffer = converter.convert()
    if not keep_tensor_names:
        flatbuffer = strip_tensor_names(flatbuffer)
    files.write_bytes_atomic(output_path, flatbuffer)
    return output_path
