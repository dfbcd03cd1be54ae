"""Inference, evaluation and op inspection of `.tflite` files with the LiteRT interpreter."""

import os

import numpy as np
from ai_edge_litert import interpreter as litert_interpreter

DEFAULT_BATCH_SIZE = 64

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
    The interpreter's batch dimension is resized to each batch.

    Args:
        interpreter_or_path: A LiteRT `Interpreter` or the path of a `.tflite` file.
        images: Float array of shape `(num_images, *input_shape)`, preprocessed as for the model.
        batch_size: Number of images per interpreter call.

    Returns:
        Float32 array of shape `(num_images, *output_shape)`: the model's probabilities or logits.

    Raises:
        ValueError: as `load_interpreter`, or if `images` does not match the model's input shape,
            or `batch_size` is not a positive integer.
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

    images = np.asarray(images, dtype=np.float32)
    expected = tuple(input_details[0]["shape_signature"][1:])
    if images.ndim != len(expected) + 1 or any(e not in (-1, s) for e, s in zip(expected, images.shape[1:])):
        raise ValueError(
            f"`images` must have shape (num_images, *{tuple(input_details[0]['shape'][1:])}). "
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


def evaluate(path, images, labels, reference_outputs=None, batch_size=DEFAULT_BATCH_SIZE):
    """Measure the top-1 accuracy of a `.tflite` classifier and its agreement with a reference.

    Args:
        path: The `.tflite` file.
        images: Float array of shape `(num_images, height, width, channels)`.
        labels: Integer class labels, shape `(num_images,)`.
        reference_outputs: Optional outputs of the reference model (usually the float Keras
            model) on the same images, shape `(num_images, num_classes)`.
        batch_size: Number of images per interpreter call.

    Returns:
        A dict with `"top1"` (fraction of images whose arg-max output equals the label),
        `"agreement"` (fraction whose arg-max equals the reference's arg-max, or `None` without a
        reference), `"num_examples"` and `"file_bytes"` (size of the `.tflite` file).

    Raises:
        ValueError: as `predict`, on no images, or when `labels` or `reference_outputs` do not
            have one row per image.
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

    outputs = predict(path, images, batch_size=batch_size)
    predictions = np.argmax(outputs, axis=-1)
    agreement = None
    if reference_outputs is not None:
        agreement = float(np.mean(predictions == np.argmax(np.asarray(reference_outputs), axis=-1)))
    return {
        "top1": float(np.mean(predictions == labels)),
        "agreement": agreement,
        "num_examples": int(num_images),
        "file_bytes": os.path.getsize(path),
    }


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
        return [tensors[i]["name"] for i in indices if i >= 0 and tensors[i]["dtype"] == np.float32]

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
