"""Tests of every conversion format, I/O type and target, baked and sidecar normalization, and robustness."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tf_keras

import keras_densenet
from keras_densenet import export
from keras_densenet.export import compatibility
from keras_densenet.export import litert
from keras_densenet.export import sidecar as sidecar_lib

TINY = "densenet_bc22_k8"
TINY_SHAPE = (8, 8, 1)
NUM_CLASSES = 3
MEAN, STD = (0.4,), (0.3,)


def synthetic_pixels(num_images, seed):
    """Return 8x8x1 pixel images (0..255) whose class is the bright half: 0 top, 1 bottom, 2 left."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, num_images)
    pixels = rng.uniform(0, 90, (num_images, *TINY_SHAPE))
    pixels[labels == 0, :4, :, :] += 160
    pixels[labels == 1, 4:, :, :] += 160
    pixels[labels == 2, :, :4, :] += 160
    return np.round(pixels).astype(np.float32), labels.astype(np.int64)


def normalize(pixels):
    return ((pixels / 255.0 - np.float32(MEAN[0])) / np.float32(STD[0])).astype(np.float32)


def tiny_model():
    return keras_densenet.DenseNet(TINY, input_shape=TINY_SHAPE, classes=NUM_CLASSES)


def write_sidecar(path, normalization="sidecar"):
    sidecar_lib.write_sidecar(
        path, sidecar_lib.make_sidecar(normalization, MEAN, STD, TINY_SHAPE, ["top", "bottom", "left"])
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train the tiny model on the synthetic task and QAT fine-tune it; return models and test data."""
    tf_keras.utils.set_random_seed(0)
    train_pixels, train_labels = synthetic_pixels(768, seed=10)
    test_pixels, test_labels = synthetic_pixels(96, seed=11)
    model = tiny_model()
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(normalize(train_pixels), train_labels, batch_size=32, epochs=3, verbose=0)
    qat = export.quantize_model(model)
    qat.compile(optimizer=tf_keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    qat.fit(normalize(train_pixels), train_labels, batch_size=32, epochs=1, verbose=0)
    return {
        "model": model,
        "qat": qat,
        "calibration": [normalize(train_pixels[:64])],
        "pixels": test_pixels,
        "images": normalize(test_pixels),
        "labels": test_labels,
        "reference": model.predict(normalize(test_pixels), verbose=0),
        "folder": tmp_path_factory.mktemp("formats"),
    }


@pytest.mark.slow
def test_dynamic_int8_keeps_float_io(trained):
    path = export.convert(trained["model"], trained["folder"] / "dynamic.tflite", quantization="dynamic_int8")

    report = compatibility.inspect(path)
    assert report["inputs"][0]["dtype"] == "FLOAT32"
    assert report["outputs"][0]["dtype"] == "FLOAT32"
    assert report["tensor_dtypes"].get("INT8", 0) > 0, report["tensor_dtypes"]
    float32_bytes = os.path.getsize(export.convert(trained["model"], trained["folder"] / "float32.tflite"))
    # Dynamic-range quantization leaves weights with fewer than 1024 elements in float32.
    assert os.path.getsize(path) < 0.6 * float32_bytes
    result = litert.evaluate(path, trained["images"], trained["labels"], reference_outputs=trained["reference"])
    assert result["agreement"] >= 0.95, result
    assert result["mean_abs_difference"] < 0.05, result


@pytest.mark.slow
def test_ptq_uint8_io_reports_scale(trained, tmp_path):
    path = export.convert(
        trained["model"],
        tmp_path / "ptq.tflite",
        quantization="ptq_int8",
        representative_dataset=trained["calibration"],
        input_type="uint8",
        output_type="uint8",
    )

    interpreter = litert.load_interpreter(path)
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]
    assert input_details["dtype"] == np.uint8
    assert output_details["dtype"] == np.uint8
    scale, zero_point = input_details["quantization"]
    assert scale > 0
    assert 0 <= zero_point <= 255
    # Softmax outputs in [0, 1] map to uint8 with scale 1/256 and zero point 0 in TFLite.
    assert output_details["quantization"] == pytest.approx((1 / 256, 0))
    result = litert.evaluate(path, trained["images"], trained["labels"], reference_outputs=trained["reference"])
    assert result["agreement"] >= 0.9, result
    probabilities = litert.predict(path, trained["images"][:8])
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=0.03)


@pytest.mark.slow
def test_qat_float_io_quantizes_inside(trained, tmp_path):
    path = export.convert(trained["qat"], tmp_path / "qat.tflite", quantization="qat_int8", input_type="float32", output_type="float32")

    report = compatibility.inspect(path)
    assert report["inputs"][0]["dtype"] == "FLOAT32"
    assert report["ops"]["QUANTIZE"] >= 1
    assert report["ops"]["DEQUANTIZE"] == 1
    assert report["float32_ops"] == ["QUANTIZE (op 0)", f"DEQUANTIZE (op {report['num_ops'] - 1})"]
    assert not report["edgetpu"]["fully_int8"]["passed"]
    assert litert.float_compute_ops(path) == []  # QUANTIZE and DEQUANTIZE at the model boundary only.
    qat_outputs = trained["qat"].predict(trained["images"], verbose=0)
    outputs = litert.predict(path, trained["images"])
    assert np.mean(np.argmax(outputs, -1) == np.argmax(qat_outputs, -1)) >= 0.95


@pytest.mark.slow
def test_cpu_batch_resize_matches_single_calls(trained, tmp_path):
    images = trained["images"][:16]
    for quantization, model in (("qat_int8", trained["qat"]), ("float32", trained["model"])):
        path = export.convert(model, tmp_path / f"{quantization}.tflite", quantization=quantization)
        interpreter = litert.load_interpreter(path)
        details = interpreter.get_input_details()[0]
        assert details["shape_signature"][0] == -1, details["shape_signature"]
        input_images = images if quantization == "float32" else litert._quantize(images, details)
        output_index = interpreter.get_output_details()[0]["index"]

        singles = []
        for image in input_images:
            interpreter.resize_tensor_input(details["index"], [1, *TINY_SHAPE])
            interpreter.allocate_tensors()
            interpreter.set_tensor(details["index"], image[np.newaxis])
            interpreter.invoke()
            singles.append(interpreter.get_tensor(output_index)[0])
        interpreter.resize_tensor_input(details["index"], [16, *TINY_SHAPE])
        interpreter.allocate_tensors()
        interpreter.set_tensor(details["index"], input_images)
        interpreter.invoke()
        batched = interpreter.get_tensor(output_index)

        assert batched.shape == (16, NUM_CLASSES)
        if quantization == "qat_int8":
            np.testing.assert_array_equal(batched, np.stack(singles), err_msg="int8 batch 16 vs 16 single calls")
        else:
            np.testing.assert_allclose(batched, np.stack(singles), atol=1e-6, err_msg="float32 batch 16 vs single calls")


@pytest.mark.slow
def test_edgetpu_target_is_static(trained, tmp_path):
    path = export.convert(trained["qat"], tmp_path / "edgetpu.tflite", quantization="qat_int8", input_type="uint8", target="edgetpu")

    interpreter = litert.load_interpreter(path)
    assert list(interpreter.get_input_details()[0]["shape_signature"]) == [1, *TINY_SHAPE]
    dynamic = [d["name"] for d in interpreter.get_tensor_details() if -1 in list(d["shape_signature"])]
    assert dynamic == []
    report = compatibility.inspect(path)
    assert report["dynamic_tensors"] == []
    assert report["edgetpu"]["ready"], report["edgetpu"]
    # predict runs a static-batch model one image per call.
    outputs = litert.predict(path, trained["images"][:5], batch_size=64)
    assert outputs.shape == (5, NUM_CLASSES)


def test_edgetpu_rejects_float_formats():
    for quantization in ("float32", "float16", "dynamic_int8"):
        with pytest.raises(ValueError, match=rf"`target='edgetpu'` needs a full-integer format.*Received: quantization='{quantization}'"):
            export.check_options(quantization, target="edgetpu")


def test_convert_rejects_bad_options(tmp_path):
    model = tiny_model()
    cases = [
        ({"quantization": "int4"}, r"`quantization` must be one of .*'qat_int8'.*Received: quantization='int4'"),
        ({"input_type": "int16"}, r"`input_type` must be one of \('int8', 'uint8', 'float32'\)\. Received: input_type='int16'"),
        ({"quantization": "float16", "output_type": "int8"}, r"`output_type` can be int8 or uint8 only for the full-integer formats"),
        ({"target": "tpu"}, r"`target` must be one of \('cpu', 'edgetpu'\)\. Received: target='tpu'"),
        ({"quantization": "float16", "target": "edgetpu"}, r"the Edge TPU executes only int8 and uint8 tensors"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            export.convert(model, tmp_path / "model.tflite", **kwargs)
    assert os.listdir(tmp_path) == []


def test_convert_rejects_ptq_of_qat_model(tmp_path):
    qat = export.quantize_model(tiny_model())
    with pytest.raises(ValueError, match=r"A QAT model converts only with quantization='qat_int8'.*Received: quantization='ptq_int8'"):
        export.convert(qat, tmp_path / "model.tflite", quantization="ptq_int8", representative_dataset=[np.zeros((1, *TINY_SHAPE))])


# Normalization: baked into the model or in the sidecar


@pytest.mark.slow
def test_baked_normalization_matches_sidecar(trained, tmp_path):
    baked = export.bake_normalization(trained["model"], MEAN, STD)
    np.testing.assert_allclose(
        baked.predict(trained["pixels"], verbose=0), trained["reference"], atol=1e-5, err_msg="baked Keras model"
    )
    baked_path = export.convert(baked, tmp_path / "baked.tflite")
    write_sidecar(baked_path, "baked")
    sidecar_path = export.convert(trained["model"], tmp_path / "plain.tflite")
    write_sidecar(sidecar_path, "sidecar")

    from_baked = litert.predict_pixels(baked_path, trained["pixels"])
    from_sidecar = litert.predict_pixels(sidecar_path, trained["pixels"])

    np.testing.assert_allclose(from_baked, trained["reference"], atol=1e-5)
    np.testing.assert_allclose(from_sidecar, trained["reference"], atol=1e-5)
    result = litert.evaluate(baked_path, trained["pixels"], trained["labels"], reference_outputs=trained["reference"], pixels=True)
    assert result["agreement"] == 1.0, result


@pytest.mark.slow
def test_baked_ptq_uint8_takes_pixels(trained, tmp_path):
    baked = export.bake_normalization(trained["model"], MEAN, STD)
    path = export.convert(
        baked, tmp_path / "baked_ptq.tflite", quantization="ptq_int8", input_type="uint8",
        representative_dataset=[trained["pixels"]],
    )
    write_sidecar(path, "baked")

    scale, zero_point = litert.load_interpreter(path).get_input_details()[0]["quantization"]
    # The calibrated pixel range is about 0..250, so one uint8 step is about one pixel level.
    assert 0.9 <= scale <= 1.1, scale
    assert zero_point == 0
    result = litert.evaluate(path, trained["pixels"], trained["labels"], reference_outputs=trained["reference"], pixels=True)
    assert result["agreement"] >= 0.9, result


@pytest.mark.slow
def test_baked_qat_keeps_normalization_fixed(trained, tmp_path):
    baked = export.bake_normalization(trained["model"], MEAN, STD)
    kernel = baked.get_layer("input_normalization").get_weights()[0]
    train_pixels, train_labels = synthetic_pixels(256, seed=12)
    qat = export.quantize_model(baked, per_channel=False)
    qat.compile(optimizer=tf_keras.optimizers.SGD(1e-3, momentum=0.9), loss="sparse_categorical_crossentropy")

    qat.fit(train_pixels, train_labels, batch_size=32, epochs=1, verbose=0)

    wrapper = qat.get_layer("quant_input_normalization")
    np.testing.assert_array_equal(wrapper.layer.get_weights()[0], kernel)  # 0..255 inputs, frozen kernel.
    ranges = {weight.name.split("/")[-1].split(":")[0]: float(weight.numpy()) for weight in wrapper.non_trainable_weights if weight.shape == ()}
    # The output range is that of the normalized training pixels from the first batch on, not
    # tfmot's starting [-6, 6].
    normalized = normalize(train_pixels)
    assert ranges["output_min"] == pytest.approx(float(normalized.min()), abs=1e-4), ranges
    assert ranges["output_max"] == pytest.approx(float(normalized.max()), abs=1e-4), ranges
    path = export.convert(qat, tmp_path / "baked_qat.tflite", quantization="qat_int8", input_type="uint8", per_channel=False)
    write_sidecar(path, "baked")
    result = litert.evaluate(path, trained["pixels"], trained["labels"], reference_outputs=trained["reference"], pixels=True)
    assert result["agreement"] >= 0.9, result


def test_bake_normalization_rejects_bad_statistics():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"`mean` must have one value per input channel \(1\)\. Received: mean=\[0\.1, 0\.2\]"):
        export.bake_normalization(model, (0.1, 0.2), STD)
    with pytest.raises(ValueError, match=r"`std` values and `pixel_scale` must be positive\. Received: std=\[0\.0\]"):
        export.bake_normalization(model, MEAN, (0.0,))


def test_predict_pixels_needs_sidecar(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"unused")
    with pytest.raises(ValueError, match=r"`tflite_path` has no sidecar model\.json with its input normalization.*Received: tflite_path="):
        litert.predict_pixels(path, np.zeros((1, *TINY_SHAPE)))


def test_sidecar_rejects_wrong_pixels():
    sidecar = sidecar_lib.make_sidecar("sidecar", MEAN, STD, TINY_SHAPE, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"`pixels` must have shape \(num_images, \*\(8, 8, 1\)\)\. Received: pixels\.shape=\(2, 8, 8, 3\)"):
        sidecar_lib.model_inputs(sidecar, np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"`pixels` must be a real-valued array\. Received: pixels\.dtype=<U1"):
        sidecar_lib.model_inputs(sidecar, np.full((2, 8, 8, 1), "x"))


@pytest.mark.slow
def test_predict_rejects_wrong_shape_and_dtype(trained):
    path = export.convert(trained["model"], trained["folder"] / "float32_inputs.tflite")
    with pytest.raises(ValueError, match=r"`images` must have shape \(num_images, \*\(8, 8, 1\)\)\. Received: images\.shape=\(2, 8, 8\)"):
        litert.predict(path, np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"`images` must be a real-valued array .*Received: images\.dtype=<U1"):
        litert.predict(path, np.full((2, *TINY_SHAPE), "x"))


# Models trained under mixed precision


@pytest.mark.slow
def test_mixed_precision_model_exports(tmp_path):
    policy = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = tiny_model()
    finally:
        tf_keras.mixed_precision.set_global_policy(policy)
    images = normalize(synthetic_pixels(8, seed=3)[0])

    copy = export.float32_copy(mixed)
    path = export.convert(copy, tmp_path / "mixed.tflite")

    assert all(layer.dtype_policy.name == "float32" for layer in copy.layers)
    outputs = litert.predict(path, images)
    np.testing.assert_allclose(outputs, copy.predict(images, verbose=0), atol=1e-5)
    np.testing.assert_allclose(outputs, mixed.predict(images, verbose=0).astype(np.float32), atol=1e-2)
    assert compatibility.inspect(path)["tensor_dtypes"].get("FLOAT16", 0) == 0


# Robustness


@pytest.mark.slow
def test_export_twice_is_identical(trained, tmp_path):
    # float32 and float16 have no calibration step; the integer formats are where a difference could come from.
    for quantization, model in (("ptq_int8", trained["model"]), ("qat_int8", trained["qat"])):
        kwargs = {"representative_dataset": trained["calibration"]} if quantization == "ptq_int8" else {}
        first = export.convert(model, tmp_path / f"{quantization}_1.tflite", quantization=quantization, **kwargs)
        second = export.convert(model, tmp_path / f"{quantization}_2.tflite", quantization=quantization, **kwargs)
        with open(first, "rb") as a, open(second, "rb") as b:
            assert a.read() == b.read(), f"two {quantization} exports differ"


@pytest.mark.slow
def test_killed_export_leaves_no_tflite(tmp_path):
    path = tmp_path / "killed.tflite"
    script = textwrap.dedent(
        f"""
        import sys
        import keras_densenet
        from keras_densenet import export
        model = keras_densenet.DenseNet("densenet_bc40_k12", input_shape=(32, 32, 3), classes=10)
        print("converting", flush=True)
        export.convert(model, {str(path)!r}, quantization="float16")
        print("done", flush=True)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert line.strip() == "converting", line
        time.sleep(1.0)  # Inside the converter: tracing and conversion take several seconds.
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not path.exists()
    leftovers = [name for name in os.listdir(tmp_path) if name.endswith(".tflite")]
    assert leftovers == []
