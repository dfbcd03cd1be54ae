"""Inference, evaluation, latency and op inspection of `.tflite` files with the LiteRT interpreter."""

import os
import statistics
import time

import numpy as np
from ai_edge_litert import interpreter as litert_interpreter

from keras_densenet.export import sidecar as sidecar_lib

DEFAULT_BATCH_SIZE = 64
DEFAULT_LATENCY_RUNS = 50

# Errors the LiteRT interpreter raises on a file that is not a valid model.
_MODEL_ERRORS = (ValueError, RuntimeError)


def _invalid_model_error(path, error):
    reason = " ".join(str(error).split())[:200]
    return ValueError(
        f"`path` is not a valid .tflite file: {reason}; re-export it with densenet-export. Received: path={path!r}"
    )


def _open_interpreter(path, num_threads=None, op_resolver_type=None):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"`path` must be an existing .tflite file; create it with densenet-export. Received: path={path!r}"
        )
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"`num_threads` must be None or a positive integer. Received: num_threads={num_threads!r}")
    kwargs = {"model_path": path, "num_threads": num_threads}
    if op_resolver_type is not None:
        kwargs["experimental_op_resolver_type"] = op_resolver_type
    try:
        interpreter = litert_interpreter.Interpreter(**kwargs)
        interpreter.allocate_tensors()
    except _MODEL_ERRORS as error:
        raise _invalid_model_error(path, error) from error
    return interpreter


def load_interpreter(path, num_threads=None):
    """Load a `.tflite` file into a LiteRT interpreter with its tensors allocated.

    Args:
        path: The `.tflite` file.
        num_threads: Number of CPU threads; `None` lets LiteRT choose.

    Returns:
        An `ai_edge_litert.interpreter.Interpreter`.

    Raises:
        ValueError: if `path` does not exist or is not a valid `.tflite` file, or `num_threads` is
            not a positive integer.
    """
    return _open_interpreter(path, num_threads=num_threads)


def _quantize(values, details):
    """Map float values to the integer type of a tensor with its scale and zero point."""
    scale, zero_point = details["quantization"]
    dtype = details["dtype"]
    if scale == 0:
        raise ValueError(
            f"The input tensor {details['name']!r} is {np.dtype(dtype).name} without a quantization scale; "
            "re-export the model with densenet-export. Received: scale=0"
        )
    info = np.iinfo(dtype)
    quantized = np.round(values / scale + zero_point)
    return np.clip(quantized, info.min, info.max).astype(dtype)


def _dequantize(values, details):
    if not np.issubdtype(details["dtype"], np.integer):
        return values.astype(np.float32)
    scale, zero_point = details["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def predict(interpreter_or_path, images, batch_size=DEFAULT_BATCH_SIZE):
    """Run a single-input, single-output `.tflite` model on float images.

    When the input tensor is int8 or uint8, the images are quantized with that tensor's own scale
    and zero point. An integer output is dequantized with the output tensor's scale and zero point.
    The interpreter's batch dimension is resized to each batch, except in a model with a static
    batch dimension (an Edge TPU export), which runs one call per image.

    Args:
        interpreter_or_path: A LiteRT `Interpreter` or the path of a `.tflite` file.
        images: Float array of shape `(num_images, *input_shape)`, preprocessed as for the model.
        batch_size: Number of images per interpreter call.

    Returns:
        Float32 array of shape `(num_images, *output_shape)`: the model's probabilities or logits.

    Raises:
        ValueError: as `load_interpreter`, or if `images` is not a real-valued array of the
            model's input shape, or `batch_size` is not a positive integer.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if isinstance(interpreter_or_path, (str, os.PathLike)):
        interpreter = load_interpreter(interpreter_or_path)
    else:
        interpreter = interpreter_or_path
    input_details = interpreter.get_input_details()
    output_details = interpreter.get_output_details()
    if len(input_details) != 1 or len(output_details) != 1:
        raise ValueError(
            "`predict` supports models with one input and one output. "
            f"Received: {len(input_details)} inputs and {len(output_details)} outputs"
        )
    input_index = input_details[0]["index"]

    images = np.asarray(images)
    if not (np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer)):
        raise ValueError(
            "`images` must be a real-valued array preprocessed as for the model. "
            f"Received: images.dtype={images.dtype}"
        )
    images = images.astype(np.float32)
    signature = input_details[0]["shape_signature"]
    if signature[0] > 0:
        batch_size = int(signature[0])  # A static batch dimension, as in an Edge TPU export.
    expected = tuple(signature[1:])
    if images.ndim != len(expected) + 1 or any(e not in (-1, s) for e, s in zip(expected, images.shape[1:])):
        raise ValueError(
            f"`images` must have shape (num_images, *{tuple(int(d) for d in input_details[0]['shape'][1:])}). "
            f"Received: images.shape={images.shape}"
        )

    outputs = []
    current_batch = None
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if len(batch) != current_batch:
            interpreter.resize_tensor_input(input_index, [len(batch), *batch.shape[1:]])
            interpreter.allocate_tensors()
            current_batch = len(batch)
            # Scale and zero point do not change, but the details are reread after each resize.
            input_details = interpreter.get_input_details()
            output_details = interpreter.get_output_details()
        if np.issubdtype(input_details[0]["dtype"], np.integer):
            batch = _quantize(batch, input_details[0])
        else:
            batch = batch.astype(input_details[0]["dtype"])
        interpreter.set_tensor(input_index, batch)
        interpreter.invoke()
        outputs.append(_dequantize(interpreter.get_tensor(output_details[0]["index"]), output_details[0]))
    if not outputs:
        output_shape = tuple(output_details[0]["shape"][1:])
        return np.zeros((0, *output_shape), np.float32)
    return np.concatenate(outputs)


def predict_pixels(path, pixels, batch_size=DEFAULT_BATCH_SIZE):
    """Run a `.tflite` model on raw pixels, normalized as its sidecar JSON describes.

    Args:
        path: The `.tflite` file, with its sidecar from densenet-export next to it.
        pixels: Real-valued array `(num_images, height, width, channels)` in [0, pixel_scale].
        batch_size: Number of images per interpreter call.

    Returns:
        As `predict`.

    Raises:
        ValueError: as `predict` and `sidecar.read_sidecar`.
    """
    sidecar = sidecar_lib.read_sidecar(path)
    return predict(path, sidecar_lib.model_inputs(sidecar, pixels), batch_size=batch_size)


def evaluate(path, images, labels, reference_outputs=None, batch_size=DEFAULT_BATCH_SIZE, pixels=False):
    """Measure the top-1 accuracy of a `.tflite` classifier and its agreement with a reference.

    Args:
        path: The `.tflite` file.
        images: Real-valued array of shape `(num_images, height, width, channels)`: model inputs,
            or raw pixels when `pixels` is true.
        labels: Integer class labels, shape `(num_images,)`.
        reference_outputs: Optional outputs of the reference model (usually the float Keras
            model) on the same images, shape `(num_images, num_classes)`.
        batch_size: Number of images per interpreter call.
        pixels: Whether `images` are raw pixels to normalize as the sidecar JSON describes
            (`predict_pixels`); otherwise they are fed as they are (`predict`).

    Returns:
        A dict with `"top1"` (fraction of images whose arg-max output equals the label),
        `"agreement"` (fraction whose arg-max equals the reference's arg-max),
        `"mean_abs_difference"` (mean over images and classes of the absolute difference between
        the outputs and the reference outputs), both `None` without a reference,
        `"num_examples"` and `"file_bytes"` (size of the `.tflite` file).

    Raises:
        ValueError: as `predict` or `predict_pixels`, on no images, or when `labels` or
            `reference_outputs` do not have one row per image.
    """
    labels = np.asarray(labels).reshape(-1)
    num_images = len(images)
    if num_images == 0:
        raise ValueError("`images` must contain at least one image to evaluate. Received: images with 0 rows")
    if len(labels) != num_images:
        raise ValueError(f"`labels` must have one label per image ({num_images}). Received: {len(labels)} labels")
    if reference_outputs is not None and len(reference_outputs) != num_images:
        raise ValueError(
            f"`reference_outputs` must have one row per image ({num_images}). "
            f"Received: {len(reference_outputs)} rows"
        )

    if pixels:
        outputs = predict_pixels(path, images, batch_size=batch_size)
    else:
        outputs = predict(path, images, batch_size=batch_size)
    predictions = np.argmax(outputs, axis=-1)
    agreement = None
    mean_abs_difference = None
    if reference_outputs is not None:
        reference_outputs = np.asarray(reference_outputs, np.float32)
        agreement = float(np.mean(predictions == np.argmax(reference_outputs, axis=-1)))
        mean_abs_difference = float(np.mean(np.abs(outputs - reference_outputs)))
    return {
        "top1": float(np.mean(predictions == labels)),
        "agreement": agreement,
        "mean_abs_difference": mean_abs_difference,
        "num_examples": int(num_images),
        "file_bytes": os.path.getsize(path),
    }


def measure_latency(path, num_threads, num_runs=DEFAULT_LATENCY_RUNS, warmup_runs=5):
    """Measure the median time of one single-image inference with the default XNNPACK delegate.

    The interpreter is loaded with LiteRT's default op resolver, which applies the XNNPACK
    delegate to the ops it supports, and runs on a zero image of the input's type and shape at
    batch size 1. Each run times one `invoke` call.

    Args:
        path: The `.tflite` file.
        num_threads: Number of CPU threads of the interpreter and of XNNPACK.
        num_runs: Number of timed runs.
        warmup_runs: Number of untimed runs before them.

    Returns:
        Median milliseconds per image.

    Raises:
        ValueError: as `load_interpreter`, or if `num_runs` is not positive or `warmup_runs` is negative.
    """
    if not isinstance(num_runs, int) or num_runs < 1:
        raise ValueError(f"`num_runs` must be a positive integer. Received: num_runs={num_runs!r}")
    if not isinstance(warmup_runs, int) or warmup_runs < 0:
        raise ValueError(f"`warmup_runs` must be a non-negative integer. Received: warmup_runs={warmup_runs!r}")
    interpreter = _open_interpreter(path, num_threads=num_threads)
    details = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(details["index"], [1, *details["shape"][1:]])
    interpreter.allocate_tensors()
    interpreter.set_tensor(details["index"], np.zeros([1, *details["shape"][1:]], details["dtype"]))
    for _ in range(warmup_runs):
        interpreter.invoke()
    timings = []
    for _ in range(num_runs):
        start = time.perf_counter()
        interpreter.invoke()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1000.0


def float_compute_ops(path):
    """List the ops of a `.tflite` model that read or write a float32 tensor.

    The model is loaded without the default XNNPACK delegate, so the list shows the ops in the
    file rather than delegate nodes. A QUANTIZE that reads the model's float input and a DEQUANTIZE
    that writes the model's float output are conversion boundaries and are not listed. A model with
    int8 input and output returns an empty list only when it computes in integers from end to end.

    Args:
        path: The `.tflite` file.

    Returns:
        Descriptions such as `"MUL (op 12): float32 inputs ['pool2_bn/mul']"`, in execution order.

    Raises:
        ValueError: as `load_interpreter`.
    """
    interpreter = _open_interpreter(
        path, op_resolver_type=litert_interpreter.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    tensors = {details["index"]: details for details in interpreter.get_tensor_details()}
    model_inputs = {details["index"] for details in interpreter.get_input_details()}
    model_outputs = {details["index"] for details in interpreter.get_output_details()}

    def float_names(indices):
        # A tensor whose name strip_tensor_names removed is shown by its index.
        return [tensors[i]["name"] or f"#{i}" for i in indices if i >= 0 and tensors[i]["dtype"] == np.float32]

    found = []
    for op in interpreter._get_ops_details():  # The interpreter has no public op listing.
        name = op["op_name"]
        inputs = [int(i) for i in op["inputs"]]
        outputs = [int(i) for i in op["outputs"]]
        if name == "QUANTIZE" and set(inputs) <= model_inputs:
            continue
        if name == "DEQUANTIZE" and set(outputs) <= model_outputs:
            continue
        float_inputs = float_names(inputs)
        float_outputs = float_names(outputs)
        parts = []
        if float_inputs:
            parts.append(f"float32 inputs {float_inputs}")
        if float_outputs:
            parts.append(f"float32 outputs {float_outputs}")
        if parts:
            found.append(f"{name} (op {op['index']}): {', '.join(parts)}")
    return found
