"""Tests of the compatibility report: a model that passes every Edge TPU check, and one failing each check."""

import json

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

import keras_densenet
from keras_densenet import export
from keras_densenet.export import compatibility

TINY_SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def qat_model():
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=TINY_SHAPE, classes=3)
    return export.quantize_model(model)


@pytest.fixture(scope="module")
def edgetpu_path(qat_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge")
    return export.convert(qat_model, folder / "edgetpu.tflite", quantization="qat_int8", input_type="uint8", target="edgetpu")


def failed_checks(report):
    return [name for name in compatibility.EDGETPU_CHECKS if not report["edgetpu"][name]["passed"]]


def edit_model(path, new_path, edit):
    """Apply `edit` to the flatbuffer object tree of `path` and write the result to `new_path`."""
    with open(path, "rb") as f:
        model = schema.ModelT.InitFromPackedBuf(f.read(), 0)
    edit(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    new_path.write_bytes(bytes(builder.Output()))
    return new_path


def operators_named(model, name):
    code = getattr(schema.BuiltinOperator, name)
    subgraph = model.subgraphs[0]
    return [op for op in subgraph.operators if model.operatorCodes[op.opcodeIndex].builtinCode == code]


@pytest.mark.slow
def test_edgetpu_export_passes_every_check(edgetpu_path, tmp_path):
    report = compatibility.inspect(edgetpu_path)

    assert report["edgetpu"]["ready"], report["edgetpu"]
    assert report["edgetpu"]["breaking"] is None
    assert failed_checks(report) == []
    assert report["integer_model"]
    assert report["float32_ops"] == []
    assert report["dynamic_tensors"] == []
    assert set(report["tensor_dtypes"]) <= {"INT8", "UINT8", "INT32"}, report["tensor_dtypes"]
    assert report["ops"]["CONV_2D"] == 21
    assert report["ops"]["SOFTMAX"] == 1
    assert report["inputs"][0]["dtype"] == "UINT8"
    assert report["inputs"][0]["shape"] == [1, *TINY_SHAPE]
    assert report["num_ops"] == sum(report["ops"].values())
    text = compatibility.format_report(report)
    assert "Edge TPU: ready" in text
    assert "CONV_2D x21" in text


@pytest.mark.slow
def test_write_report_next_to_file(edgetpu_path):
    report = compatibility.write_report(edgetpu_path)

    with open(compatibility.report_path(edgetpu_path), encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(report))
    assert compatibility.report_path("out/model_qat_int8.tflite") == "out/model_qat_int8.compatibility.json"


@pytest.mark.slow
def test_float_input_fails_fully_int8(qat_model, tmp_path):
    path = export.convert(qat_model, tmp_path / "float_in.tflite", quantization="qat_int8", input_type="float32", target="edgetpu")

    report = compatibility.inspect(path)

    assert failed_checks(report) == ["fully_int8"]
    assert report["float32_ops"] == ["QUANTIZE (op 0)"]
    assert report["edgetpu"]["breaking"] == "QUANTIZE (op 0) uses FLOAT32 tensors"
    assert not report["edgetpu"]["ready"]


@pytest.mark.slow
def test_cpu_target_fails_static_shapes(qat_model, tmp_path):
    path = export.convert(qat_model, tmp_path / "cpu.tflite", quantization="qat_int8")

    report = compatibility.inspect(path)

    assert failed_checks(report) == ["static_shapes"]
    assert report["inputs"][0]["shape"] == [-1, *TINY_SHAPE]
    assert "serving_default_input:0" in report["dynamic_tensors"]
    assert report["edgetpu"]["breaking"] == "tensor 'serving_default_input:0' has a dynamic dimension (-1)"


@pytest.mark.slow
def test_unsupported_op_fails_supported_ops(edgetpu_path, tmp_path):
    # LOG_SOFTMAX has an int8 TFLite kernel but is not among the Edge TPU's operations.
    def to_log_softmax(model):
        for code in model.operatorCodes:
            if code.builtinCode == schema.BuiltinOperator.SOFTMAX:
                code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.LOG_SOFTMAX

    path = edit_model(edgetpu_path, tmp_path / "log_softmax.tflite", to_log_softmax)
    report = compatibility.inspect(path)

    assert failed_checks(report) == ["supported_ops"]
    last = report["num_ops"] - 1
    assert report["edgetpu"]["supported_ops"]["problems"] == [f"LOG_SOFTMAX (op {last}) is not in the Edge TPU's supported operations"]
    assert report["edgetpu"]["breaking"].startswith("LOG_SOFTMAX (op ")


@pytest.mark.slow
def test_fused_activation_fails_check(edgetpu_path, tmp_path):
    def fuse_tanh_and_relu(model):
        operators_named(model, "CONV_2D")[0].builtinOptions.fusedActivationFunction = schema.ActivationFunctionType.TANH
        operators_named(model, "AVERAGE_POOL_2D")[0].builtinOptions.fusedActivationFunction = schema.ActivationFunctionType.RELU

    path = edit_model(edgetpu_path, tmp_path / "tanh.tflite", fuse_tanh_and_relu)
    report = compatibility.inspect(path)

    assert failed_checks(report) == ["fused_activations"]
    problems = report["edgetpu"]["fused_activations"]["problems"]
    assert len(problems) == 2, problems
    assert problems[0].startswith("CONV_2D (op "), problems[0]
    assert "fused activation TANH" in problems[0]
    assert problems[1].startswith("AVERAGE_POOL_2D (op "), problems[1]
    assert "fused activation RELU" in problems[1]


def test_float_model_report(tmp_path):
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=TINY_SHAPE, classes=3)
    path = export.convert(model, tmp_path / "float32.tflite")

    report = compatibility.inspect(path)

    assert not report["integer_model"]
    assert report["float32_ops"] == []  # Listed only for integer models.
    assert report["tensor_dtypes"]["FLOAT32"] > 0
    assert set(failed_checks(report)) == {"fully_int8", "static_shapes"}


@pytest.mark.parametrize("content", [b"", b"not a flatbuffer at all", b"\x00" * 4 + b"TFL3" + b"\xff" * 8])
def test_inspect_rejects_invalid_file(tmp_path, content):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"`path` is not a valid \.tflite file.*Received: path=.*bad\.tflite"):
        compatibility.inspect(path)


def test_inspect_rejects_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"`path` must be an existing \.tflite file.*Received: path=.*missing\.tflite"):
        compatibility.inspect(tmp_path / "missing.tflite")
