"""Tests of what sets the size of an int8 file: kernel scales per channel or per tensor, the sign
kernels of folded BatchNormalization layers, and stripped tensor names."""

import flatbuffers
import numpy as np
import pytest
import tf_keras
from ai_edge_litert import schema_py_generated as schema

import keras_densenet
from keras_densenet import export
from keras_densenet.export import litert
from test_export import NUM_CLASSES
from test_export import TINY
from test_export import TINY_SHAPE
from test_export import synthetic_images


def read_model(path):
    with open(path, "rb") as handle:
        content = handle.read()
    return content, schema.ModelT.InitFromPackedBuf(bytearray(content), 0)


def kernel_scale_counts(model):
    """Return `{op name: [number of scales of its kernel tensor, ...]}` for the convolutions."""
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    counts = {}
    subgraph = model.subgraphs[0]
    for operator in subgraph.operators:
        code = model.operatorCodes[operator.opcodeIndex]
        name = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            kernel = subgraph.tensors[operator.inputs[1]]
            counts.setdefault(name, []).append(len(kernel.quantization.scale))
    return counts


@pytest.fixture(scope="module")
def models():
    """A tiny model trained for two epochs, and its QAT copies with per-channel and per-tensor kernels."""
    tf_keras.utils.set_random_seed(1)
    images, labels = synthetic_images(512, seed=20)
    model = keras_densenet.DenseNet(TINY, input_shape=TINY_SHAPE, classes=NUM_CLASSES)
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, batch_size=32, epochs=2, verbose=0)
    result = {"model": model, "images": images[:64], "labels": labels[:64]}
    for per_channel in (True, False):
        qat = export.quantize_model(model, per_channel=per_channel)
        qat.compile(optimizer=tf_keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
        qat.fit(images, labels, batch_size=32, epochs=1, verbose=0)
        result[per_channel] = qat
    return result


@pytest.mark.slow
def test_folded_batch_norm_kernels_are_per_tensor(models, tmp_path):
    path = export.convert(models[True], tmp_path / "qat.tflite", quantization="qat_int8")

    counts = kernel_scale_counts(read_model(path)[1])

    # One DEPTHWISE_CONV_2D per BatchNormShift, each with one scale; convolutions keep one per channel.
    assert counts["DEPTHWISE_CONV_2D"] == [1] * len(counts["DEPTHWISE_CONV_2D"])
    assert len(counts["DEPTHWISE_CONV_2D"]) == sum(
        isinstance(layer, export.BatchNormShift) for layer in export.prepare_for_qat(models["model"]).layers
    )
    assert all(count > 1 for count in counts["CONV_2D"]), counts["CONV_2D"]


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["ptq_int8", "qat_int8"])
def test_per_tensor_kernels_make_a_smaller_file(models, tmp_path, quantization):
    sources = {True: models["model"], False: models["model"]} if quantization == "ptq_int8" else models
    calibration = {"representative_dataset": [models["images"]]} if quantization == "ptq_int8" else {}
    paths = {
        per_channel: export.convert(
            sources[per_channel], tmp_path / f"{per_channel}.tflite", quantization=quantization,
            per_channel=per_channel, **calibration,
        )
        for per_channel in (True, False)
    }

    per_channel_bytes, per_channel_model = read_model(paths[True])
    per_tensor_bytes, per_tensor_model = read_model(paths[False])

    per_tensor_counts = kernel_scale_counts(per_tensor_model)
    assert all(count == 1 for counts in per_tensor_counts.values() for count in counts), per_tensor_counts
    channels = sum(count for count in kernel_scale_counts(per_channel_model)["CONV_2D"] if count > 1)
    # Each output channel of a per-channel kernel stores a float32 scale and an int64 zero point,
    # and so does the int32 bias that goes with it: 24 bytes.
    saved = len(per_channel_bytes) - len(per_tensor_bytes)
    assert 20 * channels <= saved <= 28 * channels, (saved, channels)
    for per_channel, path in paths.items():
        # Each file should compute what its source model computes: the float model or its QAT copy.
        reference = sources[per_channel].predict(models["images"], verbose=0)
        result = litert.evaluate(path, models["images"], models["labels"], reference_outputs=reference)
        assert result["agreement"] >= 0.9, (path, result)


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["float32", "qat_int8"])
def test_stripped_names_keep_outputs_and_alignment(models, tmp_path, quantization):
    source = models[True] if quantization == "qat_int8" else models["model"]
    named = export.convert(source, tmp_path / "named.tflite", quantization=quantization, keep_tensor_names=True)
    stripped = export.convert(source, tmp_path / "stripped.tflite", quantization=quantization)

    named_bytes, named_model = read_model(named)
    stripped_bytes, stripped_model = read_model(stripped)

    names_bytes = sum(len(tensor.name) for tensor in named_model.subgraphs[0].tensors)
    assert len(named_bytes) - len(stripped_bytes) >= 0.8 * names_bytes, (len(named_bytes), len(stripped_bytes), names_bytes)
    subgraph = stripped_model.subgraphs[0]
    io = set(subgraph.inputs) | set(subgraph.outputs)
    for index, tensor in enumerate(subgraph.tensors):
        if index in io:
            assert tensor.name == named_model.subgraphs[0].tensors[index].name
        else:
            assert not tensor.name, tensor.name
    assert [signature.signatureKey for signature in stripped_model.signatureDefs] == [b"serving_default"]
    np.testing.assert_array_equal(
        litert.predict(stripped, models["images"]), litert.predict(named, models["images"])
    )
    # Every constant buffer starts on a 16-byte boundary, as the converter writes it.
    root = schema.Model.GetRootAs(stripped_bytes, 0)
    for index in range(root.BuffersLength()):
        buffer = root.Buffers(index)
        field = flatbuffers.number_types.UOffsetTFlags.py_type(buffer._tab.Offset(4))
        if field and buffer.DataLength():
            assert buffer._tab.Vector(field) % 16 == 0, f"buffer {index} is not 16-byte aligned"
    assert export.strip_tensor_names(stripped_bytes) == stripped_bytes


def test_convert_rejects_non_bool_options(tmp_path):
    model = keras_densenet.DenseNet(TINY, input_shape=TINY_SHAPE, classes=NUM_CLASSES)
    for name in ("per_channel", "keep_tensor_names"):
        with pytest.raises(ValueError, match=f"`{name}` must be True or False. Received: {name}='no'"):
            export.convert(model, tmp_path / "model.tflite", **{name: "no"})
    with pytest.raises(ValueError, match="`per_channel` must be True or False"):
        export.quantize_model(model, per_channel=1)
    assert not (tmp_path / "model.tflite").exists()
