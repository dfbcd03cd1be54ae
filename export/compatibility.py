"""Compatibility report of a `.tflite` file: ops, tensor types, dynamic shapes and Edge TPU readiness.

The report is read from the flatbuffer itself (the LiteRT schema bundled with ai-edge-litert), so it
describes the ops in the file, not the nodes of a delegate, and needs no interpreter.
"""

import collections
import json
import os

from ai_edge_litert import schema_py_generated as schema

from keras_densenet.utils import files

# Ops that the Edge TPU can execute, in TFLite builtin names: the "Supported operations" table of the
# Coral page "TensorFlow models on the Edge TPU" (coral.ai/docs/edgetpu/models-intro, Edge TPU
# Compiler 16), written from memory and checked against the same table that Axis publishes for its
# ARTPEC-7 chip (developer.axis.com, computer-vision/on-device/system-on-chip/artpec-7/supported-ops,
# read in 2025). NOTE: the compiler maps more or fewer ops per version, and this check ignores
# per-op size limits, so only the Edge TPU compiler's own log is final.
EDGETPU_SUPPORTED_OPS = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS",
        "FULLY_CONNECTED",
        "L2_NORMALIZATION",
        "LOGISTIC",
        "LSTM",
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
        "MAXIMUM",
        "MAX_POOL_2D",
        "MEAN",
        "MINIMUM",
        "MUL",
        "PACK",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQUARED_DIFFERENCE",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    }
)

# Fused activations the Edge TPU executes with its op (same source). The same table lists
# AVERAGE_POOL_2D, CONCATENATION and MAX_POOL_2D as taking no fused activation at all.
EDGETPU_FUSED_ACTIVATIONS = frozenset({"NONE", "RELU", "RELU6", "RELU_N1_TO_1"})
EDGETPU_NO_FUSED_ACTIVATION_OPS = frozenset({"AVERAGE_POOL_2D", "CONCATENATION", "MAX_POOL_2D"})

# Tensor types that an Edge TPU model may contain: int8 or uint8 data and int32 biases.
EDGETPU_TENSOR_TYPES = frozenset({"INT8", "UINT8", "INT32"})

EDGETPU_CHECKS = ("fully_int8", "static_shapes", "supported_ops", "fused_activations")


def _enum_names(enum_class):
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


_OP_NAMES = _enum_names(schema.BuiltinOperator)
_TYPE_NAMES = _enum_names(schema.TensorType)
_ACTIVATION_NAMES = _enum_names(schema.ActivationFunctionType)


def _load_model(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"`path` must be an existing .tflite file; create it with densenet-export. Received: path={path!r}"
        )
    with open(path, "rb") as f:
        content = f.read()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ValueError(
            "`path` is not a valid .tflite file: no TFL3 flatbuffer identifier; re-export it with "
            f"densenet-export. Received: path={path!r}"
        )
    try:
        model = schema.ModelT.InitFromPackedBuf(content, 0)
    except Exception as error:  # The generated flatbuffer reader raises assorted errors on bad offsets.
        reason = " ".join(str(error).split())[:200]
        raise ValueError(
            f"`path` is not a valid .tflite file: {reason}; re-export it with densenet-export. Received: path={path!r}"
        ) from error
    if not model.subgraphs or model.operatorCodes is None or model.buffers is None:
        raise ValueError(
            "`path` is not a valid .tflite file: it has no subgraph, op codes or buffers; re-export it with "
            f"densenet-export. Received: path={path!r}"
        )
    return model


def _op_name(model, operator):
    code = model.operatorCodes[operator.opcodeIndex]
    # Codes above 127 are stored only in `builtinCode`; older files fill only `deprecatedBuiltinCode`.
    number = max(code.builtinCode, code.deprecatedBuiltinCode)
    if number == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
        return f"CUSTOM:{custom}"
    return _OP_NAMES.get(number, f"UNKNOWN_{number}")


def _tensor_name(tensor, index):
    """Return the tensor's name, or `#index` for a tensor whose name `strip_tensor_names` removed."""
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
    return name if name else f"#{index}"


def _tensor_shape(tensor):
    """Return the tensor's shape signature, where -1 marks a dynamic dimension."""
    if tensor.shapeSignature is not None and len(tensor.shapeSignature):
        return [int(d) for d in tensor.shapeSignature]
    return [] if tensor.shape is None else [int(d) for d in tensor.shape]


def _fused_activation(operator):
    options = operator.builtinOptions
    value = getattr(options, "fusedActivationFunction", None)
    return None if value is None else _ACTIVATION_NAMES.get(value, f"UNKNOWN_{value}")


def _io_details(model, subgraph, indices):
    details = []
    for index in indices:
        tensor = subgraph.tensors[index]
        entry = {"name": _tensor_name(tensor, index), "dtype": _TYPE_NAMES[tensor.type], "shape": _tensor_shape(tensor)}
        quantization = tensor.quantization
        if quantization is not None and quantization.scale is not None and len(quantization.scale):
            entry["scale"] = float(quantization.scale[0])
            entry["zero_point"] = int(quantization.zeroPoint[0])
        details.append(entry)
    return details


def inspect(path):
    """Build the compatibility report of a `.tflite` file.

    Args:
        path: The `.tflite` file.

    Returns:
        A JSON-serializable dict:
        `"ops"` (op name to count), `"tensor_dtypes"` (type name to count), `"inputs"` and
        `"outputs"` (name, dtype, shape signature, and scale and zero point when quantized),
        `"integer_model"` (whether the file has int8 weights or activations), `"float32_ops"`
        (each op with a float32 input or output, as `"CONV_2D (op 3)"`, listed only for an integer
        model), `"dynamic_tensors"` (names of tensors with a -1 dimension), and `"edgetpu"`: one
        entry per name in `EDGETPU_CHECKS` with `"passed"` and `"problems"` (one line per op or
        tensor that fails it), plus `"ready"` (every check passed) and `"breaking"` (the first
        problem, or `None`).

    Raises:
        ValueError: if `path` does not exist or is not a valid `.tflite` flatbuffer.
    """
    model = _load_model(path)
    if len(model.subgraphs) != 1:
        subgraph_problem = f"the model has {len(model.subgraphs)} subgraphs; the Edge TPU maps one"
    else:
        subgraph_problem = None
    subgraph = model.subgraphs[0]
    tensors = subgraph.tensors
    op_names = [_op_name(model, operator) for operator in subgraph.operators]

    tensor_dtypes = collections.Counter(_TYPE_NAMES[tensor.type] for tensor in tensors)
    integer_model = tensor_dtypes.get("INT8", 0) > 0 or tensor_dtypes.get("UINT8", 0) > 0

    float32_ops = []
    type_problems = []
    activation_problems = []
    op_problems = []
    for index, (operator, name) in enumerate(zip(subgraph.operators, op_names)):
        used = [i for i in list(operator.inputs) + list(operator.outputs) if i >= 0]
        used_types = {_TYPE_NAMES[tensors[i].type] for i in used}
        label = f"{name} (op {index})"
        if "FLOAT32" in used_types:
            float32_ops.append(label)
        bad_types = sorted(used_types - EDGETPU_TENSOR_TYPES)
        if bad_types:
            type_problems.append(f"{label} uses {', '.join(bad_types)} tensors")
        if name not in EDGETPU_SUPPORTED_OPS:
            op_problems.append(f"{label} is not in the Edge TPU's supported operations")
        activation = _fused_activation(operator)
        if activation is not None and activation != "NONE":
            if name in EDGETPU_NO_FUSED_ACTIVATION_OPS or activation not in EDGETPU_FUSED_ACTIVATIONS:
                activation_problems.append(f"{label} has fused activation {activation}, which the Edge TPU cannot run")
    if subgraph_problem:
        op_problems.insert(0, subgraph_problem)

    dynamic_tensors = [_tensor_name(tensor, index) for index, tensor in enumerate(tensors) if -1 in _tensor_shape(tensor)]
    shape_problems = [f"tensor {name!r} has a dynamic dimension (-1)" for name in dynamic_tensors]
    for details in _io_details(model, subgraph, subgraph.inputs):
        if details["shape"][:1] != [1] and -1 not in details["shape"]:
            shape_problems.append(f"input {details['name']!r} has batch size {details['shape'][:1]}, not 1")

    checks = {
        "fully_int8": type_problems,
        "static_shapes": shape_problems,
        "supported_ops": op_problems,
        "fused_activations": activation_problems,
    }
    edgetpu = {name: {"passed": not problems, "problems": problems} for name, problems in checks.items()}
    first_problems = [problems[0] for problems in checks.values() if problems]
    edgetpu["ready"] = not first_problems
    edgetpu["breaking"] = first_problems[0] if first_problems else None
    return {
        "path": os.fspath(path),
        "file_bytes": os.path.getsize(path),
        "ops": dict(sorted(collections.Counter(op_names).items())),
        "num_ops": len(op_names),
        "tensor_dtypes": dict(sorted(tensor_dtypes.items())),
        "inputs": _io_details(model, subgraph, subgraph.inputs),
        "outputs": _io_details(model, subgraph, subgraph.outputs),
        "integer_model": integer_model,
        "float32_ops": float32_ops if integer_model else [],
        "dynamic_tensors": dynamic_tensors,
        "edgetpu": edgetpu,
    }


def report_path(tflite_path):
    """Return the report path of a `.tflite` path: `model_x.tflite` gives `model_x.compatibility.json`."""
    root, _ = os.path.splitext(os.fspath(tflite_path))
    return root + ".compatibility.json"


def format_report(report):
    """Return a short human-readable text of a report from `inspect`."""
    edgetpu = report["edgetpu"]
    lines = [
        f"{report['path']}: {report['file_bytes']:,d} bytes, {report['num_ops']} ops",
        "  ops: " + ", ".join(f"{name} x{count}" for name, count in report["ops"].items()),
        "  tensor dtypes: " + ", ".join(f"{name} x{count}" for name, count in report["tensor_dtypes"].items()),
        "  input: " + json.dumps(report["inputs"]),
        "  output: " + json.dumps(report["outputs"]),
        f"  float32 ops in an integer model: {len(report['float32_ops'])}",
        f"  tensors with a dynamic shape: {len(report['dynamic_tensors'])}",
    ]
    for name in EDGETPU_CHECKS:
        check = edgetpu[name]
        state = "pass" if check["passed"] else f"FAIL ({len(check['problems'])}): {check['problems'][0]}"
        lines.append(f"  Edge TPU {name}: {state}")
    verdict = "ready" if edgetpu["ready"] else f"not ready: {edgetpu['breaking']}"
    lines.append(f"  Edge TPU: {verdict}")
    return "\n".join(lines)


def write_report(tflite_path):
    """Inspect `tflite_path`, write the report next to it (`report_path`) atomically, and return the report."""
    report = inspect(tflite_path)
    files.write_json_atomic(report_path(tflite_path), report)
    return report
