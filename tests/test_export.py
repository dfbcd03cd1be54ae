"""Tests of QAT preparation, TFLite conversion and LiteRT evaluation with real tfmot and LiteRT."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

import keras_densenet
from keras_densenet import export
from keras_densenet.export import litert
from keras_densenet.export import quantize

TINY = "densenet_bc22_k8"
TINY_SHAPE = (8, 8, 1)
NUM_CLASSES = 3


def synthetic_images(num_images, seed):
    """Return 8x8x1 images whose class is the bright half: 0 top, 1 bottom, 2 left; with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, num_images)
    images = rng.normal(0.0, 0.3, (num_images, *TINY_SHAPE)).astype(np.float32)
    images[labels == 0, :4, :, :] += 1.0
    images[labels == 1, 4:, :, :] += 1.0
    images[labels == 2, :, :4, :] += 1.0
    return images, labels.astype(np.int64)


def randomize_batch_norm(model, seed=0):
    """Give every BatchNormalization non-trivial gamma, beta and moving statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, channels),
                    rng.normal(0.0, 0.3, channels),
                    rng.normal(0.0, 0.3, channels),
                    rng.uniform(0.5, 2.0, channels),
                ]
            )


def tiny_model(dropout_rate=0.0):
    return keras_densenet.DenseNet(TINY, input_shape=TINY_SHAPE, classes=NUM_CLASSES, dropout_rate=dropout_rate)


def weights_by_name(model):
    return {weight.name: weight.numpy().copy() for weight in model.weights}


def batch_norm_names(model):
    return [layer.name for layer in model.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]


def assert_close(actual, expected, atol, what):
    difference = np.max(np.abs(actual - expected))
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert difference <= atol, f"{what}: max abs difference {difference:.3g} > {atol}; first rows {actual[:2]} vs {expected[:2]}"


# prepare_for_qat


@pytest.mark.parametrize("dropout_rate", [0.0, 0.2])
def test_prepare_for_qat_matches_inference(dropout_rate):
    model = tiny_model(dropout_rate)
    randomize_batch_norm(model)
    before = weights_by_name(model)
    images, _ = synthetic_images(16, seed=1)

    prepared = quantize.prepare_for_qat(model)

    assert_close(prepared(images, training=False).numpy(), model(images, training=False).numpy(), 1e-5, "outputs")
    assert [layer.name for layer in prepared.layers] == [layer.name for layer in model.layers]
    assert prepared is not model
    after = weights_by_name(model)
    assert before.keys() == after.keys()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=f"input model weight {name} changed")


def test_prepare_for_qat_rewrites_unfoldable_batch_norm():
    model = tiny_model()

    prepared = quantize.prepare_for_qat(model)

    # Only the bottleneck BatchNormalization layers stay: each follows a Conv2D that feeds nothing else.
    kept = batch_norm_names(prepared)
    assert kept, "expected the bottleneck BatchNormalization layers to stay"
    assert all(name.endswith("_1_bn") for name in kept), kept
    rewritten = set(batch_norm_names(model)) - set(kept)
    assert "conv2_block1_0_bn" in rewritten  # follows the stem Conv2D, which also feeds the concatenation
    assert "bn" in rewritten
    for name in rewritten:
        layer = prepared.get_layer(name)
        assert isinstance(layer, tf_keras.layers.DepthwiseConv2D), f"{name} is {type(layer).__name__}"
        assert layer.kernel_size == (1, 1)
        assert layer.use_bias


def test_prepare_for_qat_folds_affine():
    model = tiny_model()
    randomize_batch_norm(model, seed=3)
    source = model.get_layer("pool2_bn")
    gamma, beta, mean, variance = source.get_weights()
    conv_kernel = model.get_layer("pool2_conv").get_weights()[0]

    prepared = quantize.prepare_for_qat(model)

    # pool2_bn feeds pool2_relu, then pool2_conv: the scale's magnitude moves into that kernel.
    shift = prepared.get_layer("pool2_bn")
    assert isinstance(shift, quantize.BatchNormShift)
    sign, offset = shift.get_weights()
    scale = gamma / np.sqrt(variance + source.epsilon)
    bias = beta - mean * scale
    folded_kernel = prepared.get_layer("pool2_conv").get_weights()[0]
    factor = folded_kernel[0, 0, :, 0] / conv_kernel[0, 0, :, 0]
    assert np.all(factor > 0)
    np.testing.assert_allclose(sign.reshape(-1) * factor, scale, rtol=1e-5)
    np.testing.assert_allclose(offset * factor, bias, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(folded_kernel, conv_kernel * factor[None, None, :, None], rtol=1e-6)
    # gamma in [0.5, 1.5] and offsets within the input range: every sign is exactly 1.
    np.testing.assert_allclose(sign, 1.0, rtol=1e-6)


def test_prepare_for_qat_folds_unusual_scales():
    """Negative, zero and almost zero BatchNormalization scales fold without changing outputs."""
    model = tiny_model()
    randomize_batch_norm(model, seed=6)
    layer = model.get_layer("conv3_block1_0_bn")
    gamma, beta, mean, variance = layer.get_weights()
    gamma[:4] = [-0.8, 0.0, 1e-7, -1e-7]  # negative, dead, and almost dead channels
    beta[:4] = [0.2, 0.7, 0.9, -0.4]
    layer.set_weights([gamma, beta, mean, variance])
    images, _ = synthetic_images(16, seed=2)

    prepared = quantize.prepare_for_qat(model)

    assert_close(prepared(images, training=False).numpy(), model(images, training=False).numpy(), 1e-5, "outputs")
    sign, offset = prepared.get_layer("conv3_block1_0_bn").get_weights()
    sign = sign.reshape(-1)
    assert sign[0] == pytest.approx(-1.0)
    assert sign[1] == 0.0
    assert np.all(np.abs(sign) <= 1.0 + 1e-6)
    # An almost constant channel keeps its offset within the input range (|mean| + 4 std at most),
    # instead of beta / 1e-7, which would widen the int8 range of the whole tensor.
    input_range = np.max(np.abs(mean) + 4.0 * np.sqrt(variance + layer.epsilon))
    assert np.max(np.abs(offset)) <= input_range * (1 + 1e-5), (np.max(np.abs(offset)), input_range)


def test_prepare_for_qat_keeps_affine_without_following_kernel():
    model = keras_densenet.DenseNet(TINY, include_top=False, input_shape=TINY_SHAPE)
    randomize_batch_norm(model, seed=4)
    source = model.get_layer("bn")
    gamma, beta, mean, variance = source.get_weights()

    prepared = quantize.prepare_for_qat(model)

    # The final BN-ReLU is the model output, so there is no kernel to take the scale.
    depthwise = prepared.get_layer("bn")
    assert type(depthwise) is tf_keras.layers.DepthwiseConv2D
    kernel, bias = depthwise.get_weights()
    scale = gamma / np.sqrt(variance + source.epsilon)
    np.testing.assert_allclose(kernel.reshape(-1), scale, rtol=1e-6)
    np.testing.assert_allclose(bias, beta - mean * scale, rtol=1e-5, atol=1e-6)
    assert isinstance(prepared.get_layer("pool2_bn"), quantize.BatchNormShift)


@pytest.mark.parametrize("dropout_rate", [0.0, 0.2])
def test_prepare_for_qat_merges_conv_batch_norm(dropout_rate):
    model = tiny_model(dropout_rate)  # With dropout, a Dropout layer sits between each Conv2D and BN.
    randomize_batch_norm(model, seed=7)
    images, _ = synthetic_images(16, seed=3)

    prepared = quantize.prepare_for_qat(model, keep_conv_batch_norm=False)

    assert_close(prepared(images, training=False).numpy(), model(images, training=False).numpy(), 1e-5, "outputs")
    assert batch_norm_names(prepared) == []
    merged = [layer.name for layer in prepared.layers if isinstance(layer, quantize.FoldedConv2D)]
    # Each bottleneck convolution takes its BatchNormalization, which the copy no longer has.
    assert merged and all(name.endswith("_1_conv") for name in merged), merged
    assert {name.replace("_conv", "_bn") for name in merged}.isdisjoint(layer.name for layer in prepared.layers)
    assert len(prepared.layers) == len(model.layers) - len(merged)


def test_prepare_for_qat_densenet121():
    model = keras_densenet.DenseNet121(include_top=False, input_shape=(64, 64, 3))
    randomize_batch_norm(model, seed=5)
    images = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)

    prepared = quantize.prepare_for_qat(model)

    # In the ImageNet layout only conv1_bn and the bottleneck BatchNormalization layers can fold.
    assert all(name == "conv1_bn" or name.endswith("_1_bn") for name in batch_norm_names(prepared))
    expected = model(images, training=False).numpy()
    actual = prepared(images, training=False).numpy()
    # 120 layers deep with random statistics, so compare relative to the output's magnitude.
    assert_close(actual / np.max(np.abs(expected)), expected / np.max(np.abs(expected)), 1e-5, "densenet121 outputs")


def test_prepare_for_qat_rejects_subclassed_model():
    class Subclassed(tf_keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(ValueError, match=r"`model` must be a functional tf_keras model.*Received: model=Subclassed"):
        quantize.prepare_for_qat(Subclassed())


# quantize_model


def test_quantize_model_trains_tiny():
    model = tiny_model(dropout_rate=0.1)
    before = weights_by_name(model)
    images, labels = synthetic_images(32, seed=4)

    qat = quantize.quantize_model(model)
    qat.compile(optimizer=tf_keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    history = qat.fit(images, labels, batch_size=16, epochs=1, verbose=0)

    assert np.isfinite(history.history["loss"][0]), history.history
    assert export.is_qat_model(qat)
    assert not export.is_qat_model(model)
    wrapped = [layer for layer in qat.layers if isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2)]
    assert len(wrapped) == len(model.layers) - 1  # every layer but the InputLayer
    pool = qat.get_layer("quant_pool2_pool")
    assert isinstance(pool.quantize_config, quantize.SameScaleQuantizeConfig)
    for name, value in weights_by_name(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=f"input model weight {name} changed")


@pytest.mark.slow
def test_quantize_model_builds_densenet121():
    model = keras_densenet.DenseNet121(include_top=True, input_shape=(32, 32, 3), classes=10)

    qat = quantize.quantize_model(model)

    assert export.is_qat_model(qat)
    assert qat.output_shape == (None, 10)


# Conversion and evaluation on a trained tiny model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train the tiny model on the synthetic task, QAT fine-tune it and convert it to every type."""
    folder = tmp_path_factory.mktemp("export")
    tf_keras.utils.set_random_seed(0)
    train_images, train_labels = synthetic_images(768, seed=10)
    test_images, test_labels = synthetic_images(128, seed=11)

    model = tiny_model()
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_images, train_labels, batch_size=32, epochs=3, verbose=0)

    qat = quantize.quantize_model(model)
    qat.compile(optimizer=tf_keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    qat.fit(train_images, train_labels, batch_size=32, epochs=1, verbose=0)

    paths = {
        "float32": export.convert(model, folder / "model_float32.tflite"),
        "float16": export.convert(model, folder / "model_float16.tflite", quantization="float16"),
        "int8": export.convert(qat, folder / "model_int8.tflite", quantization="int8"),
    }
    return {
        "model": model,
        "qat": qat,
        "paths": paths,
        "test_images": test_images,
        "test_labels": test_labels,
        "folder": folder,
    }


@pytest.mark.slow
def test_int8_has_no_float_ops(trained):
    path = trained["paths"]["int8"]

    assert litert.float_compute_ops(path) == []

    interpreter = litert.load_interpreter(path)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    float_tensors = [
        details["name"] for details in interpreter.get_tensor_details() if details["dtype"] == np.float32
    ]
    assert float_tensors == []


@pytest.mark.slow
def test_float_compute_ops_finds_float_model(trained):
    ops = litert.float_compute_ops(trained["paths"]["float32"])

    assert any(op.startswith("CONV_2D (op ") and "float32 inputs" in op for op in ops), ops[:5]
    float16_ops = litert.float_compute_ops(trained["paths"]["float16"])
    assert any(op.startswith("DEQUANTIZE (op ") and "float32 outputs" in op for op in float16_ops), float16_ops[:5]


@pytest.mark.slow
def test_float32_tflite_equals_keras(trained):
    images = trained["test_images"]
    expected = trained["model"].predict(images, verbose=0)

    actual = litert.predict(trained["paths"]["float32"], images, batch_size=50)

    assert_close(actual, expected, 1e-5, "float32 .tflite vs Keras")


@pytest.mark.slow
def test_float16_tflite_is_smaller_and_close(trained):
    images = trained["test_images"]
    expected = trained["model"].predict(images, verbose=0)

    actual = litert.predict(trained["paths"]["float16"], images)

    assert_close(actual, expected, 2e-2, "float16 .tflite vs Keras")
    float32_bytes = os.path.getsize(trained["paths"]["float32"])
    float16_bytes = os.path.getsize(trained["paths"]["float16"])
    assert float16_bytes < 0.75 * float32_bytes, (float16_bytes, float32_bytes)


@pytest.mark.slow
def test_int8_agrees_with_float(trained):
    images, labels = trained["test_images"], trained["test_labels"]
    reference = trained["model"].predict(images, verbose=0)
    float_top1 = float(np.mean(np.argmax(reference, axis=-1) == labels))
    assert float_top1 >= 0.9, f"the float model did not learn the synthetic task: top-1 {float_top1}"

    result = litert.evaluate(trained["paths"]["int8"], images, labels, reference_outputs=reference)

    assert result["num_examples"] == len(images)
    assert result["file_bytes"] == os.path.getsize(trained["paths"]["int8"])
    assert result["agreement"] >= 0.9, result
    assert result["top1"] >= 0.85, result
    probabilities = litert.predict(trained["paths"]["int8"], images[:8])
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=0.02)


@pytest.mark.slow
def test_int8_matches_qat_model(trained):
    images = trained["test_images"]
    qat_outputs = trained["qat"].predict(images, verbose=0)

    outputs = litert.predict(trained["paths"]["int8"], images)

    agreement = np.mean(np.argmax(outputs, axis=-1) == np.argmax(qat_outputs, axis=-1))
    assert agreement >= 0.95, f"int8 vs QAT model top-1 agreement {agreement}"
    assert_close(outputs, qat_outputs, 0.1, "int8 .tflite vs QAT model probabilities")


@pytest.mark.slow
def test_qat_model_reloads_in_fresh_process(trained, tmp_path):
    path = tmp_path / "qat.h5"
    images = trained["test_images"][:16]
    np.save(tmp_path / "images.npy", images)
    expected = trained["qat"].predict(images, verbose=0)

    quantize.save_qat_model(trained["qat"], path)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from keras_densenet.export import quantize
        model = quantize.load_qat_model({str(path)!r})
        images = np.load({str(tmp_path / "images.npy")!r})
        np.save({str(tmp_path / "reloaded.npy")!r}, model.predict(images, verbose=0))
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)

    assert completed.returncode == 0, completed.stderr[-2000:]
    reloaded = np.load(tmp_path / "reloaded.npy")
    assert_close(reloaded, expected, 1e-6, "reloaded QAT model")
    assert sorted(os.listdir(tmp_path)) == ["images.npy", "qat.h5", "reloaded.npy"]


@pytest.mark.slow
def test_int8_qat_ignores_calibration_data(trained, tmp_path):
    """A QAT model takes every range from its fake-quant ops, so calibration data changes nothing."""
    images = trained["test_images"] * 5.0

    path = export.convert(trained["qat"], tmp_path / "calibrated.tflite", quantization="int8", representative_dataset=[images])

    with open(path, "rb") as calibrated, open(trained["paths"]["int8"], "rb") as uncalibrated:
        assert calibrated.read() == uncalibrated.read()


@pytest.mark.slow
def test_post_training_int8_from_float_model(trained, tmp_path):
    images = trained["test_images"]
    batches = tf.data.Dataset.from_tensor_slices((images, trained["test_labels"])).batch(16)

    path = export.convert(
        trained["model"], tmp_path / "ptq.tflite", quantization="ptq_int8", representative_dataset=batches, num_calibration_batches=4
    )

    interpreter = litert.load_interpreter(path)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    reference = trained["model"].predict(images, verbose=0)
    result = litert.evaluate(path, images, trained["test_labels"], reference_outputs=reference)
    assert result["agreement"] >= 0.9, result


# Bad input


def test_convert_rejects_unknown_quantization(tmp_path):
    with pytest.raises(ValueError, match=r"`quantization` must be one of \('float32', 'float16', 'dynamic_int8', 'ptq_int8', 'qat_int8', 'int8'\).*Received: quantization='int4'"):
        export.convert(tiny_model(), tmp_path / "model.tflite", quantization="int4")
    assert os.listdir(tmp_path) == []


def test_convert_ptq_int8_needs_dataset(tmp_path):
    with pytest.raises(ValueError, match=r"`representative_dataset` is required.*Received: representative_dataset=None"):
        export.convert(tiny_model(), tmp_path / "model.tflite", quantization="ptq_int8")
    assert os.listdir(tmp_path) == []


def test_convert_qat_int8_needs_qat_model(tmp_path):
    for name in ("qat_int8", "int8"):
        with pytest.raises(ValueError, match=r"`quantization='qat_int8'` needs a QAT model from quantize_model"):
            export.convert(tiny_model(), tmp_path / "model.tflite", quantization=name)
    assert os.listdir(tmp_path) == []


def test_convert_empty_dataset_writes_nothing(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"previous")

    with pytest.raises(ValueError, match=r"`representative_dataset` yielded no images.*Received: representative_dataset=empty"):
        export.convert(tiny_model(), path, quantization="ptq_int8", representative_dataset=[])

    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["model.tflite"]


def test_convert_rejects_wrong_image_shape(tmp_path):
    images = np.zeros((4, 16, 16, 3), np.float32)

    with pytest.raises(ValueError, match=r"`representative_dataset` must yield batches of images of shape.*Received: a batch of shape \(4, 16, 16, 3\)"):
        export.convert(tiny_model(), tmp_path / "model.tflite", quantization="ptq_int8", representative_dataset=[images])
    assert os.listdir(tmp_path) == []


def test_convert_rejects_non_numeric_dataset(tmp_path):
    batch = np.full((2, *TINY_SHAPE), "a")

    with pytest.raises(ValueError, match=r"`representative_dataset` must yield real-valued image arrays.*Received: a batch of dtype <U1"):
        export.convert(tiny_model(), tmp_path / "model.tflite", quantization="ptq_int8", representative_dataset=[batch])
    assert os.listdir(tmp_path) == []


def test_convert_rejects_bad_calibration_count(tmp_path):
    with pytest.raises(ValueError, match=r"`num_calibration_batches` must be a positive integer\. Received: num_calibration_batches=0"):
        export.convert(tiny_model(), tmp_path / "model.tflite", quantization="int8", num_calibration_batches=0)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(np.random.default_rng(0).bytes(4096), id="random_bytes"),
        pytest.param(b"", id="empty"),
    ],
)
def test_load_interpreter_rejects_corrupt_file(tmp_path, content):
    path = tmp_path / "corrupt.tflite"
    path.write_bytes(content)

    with pytest.raises(ValueError, match=r"`path` is not a valid \.tflite file: .*re-export it with densenet-export\. Received: path=.*corrupt\.tflite") as raised:
        litert.load_interpreter(path)
    assert "\n" not in str(raised.value)


@pytest.mark.slow
def test_load_interpreter_rejects_truncated_file(trained, tmp_path):
    path = tmp_path / "truncated.tflite"
    path.write_bytes(open(trained["paths"]["int8"], "rb").read()[:2000])

    with pytest.raises(ValueError, match=r"`path` is not a valid \.tflite file.*Received: path=.*truncated\.tflite"):
        litert.load_interpreter(path)
    with pytest.raises(ValueError, match=r"is not a valid \.tflite file"):
        litert.float_compute_ops(path)


def test_load_interpreter_rejects_missing_file(tmp_path):
    path = tmp_path / "missing.tflite"
    with pytest.raises(ValueError, match=r"`path` must be an existing \.tflite file.*Received: path=.*missing\.tflite"):
        litert.load_interpreter(path)
    with pytest.raises(ValueError, match=r"`path` must be an existing \.tflite file"):
        litert.evaluate(path, np.zeros((1, *TINY_SHAPE), np.float32), [0])


def test_load_qat_model_rejects_missing_and_corrupt(tmp_path):
    missing = tmp_path / "missing.h5"
    with pytest.raises(ValueError, match=r"`path` must be an existing QAT model file.*Received: path=.*missing\.h5"):
        quantize.load_qat_model(missing)

    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not an hdf5 file" * 10)
    with pytest.raises(ValueError, match=r"`path` is not a valid QAT model file: .*Received: path=.*corrupt\.h5") as raised:
        quantize.load_qat_model(corrupt)
    assert "\n" not in str(raised.value)


def test_save_qat_model_rejects_other_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"`path` of a QAT model must end with \.h5\. Received: path=.*qat\.keras"):
        quantize.save_qat_model(tiny_model(), tmp_path / "qat.keras")


def test_evaluate_rejects_mismatched_labels(tmp_path):
    path = tmp_path / "unused.tflite"
    with pytest.raises(ValueError, match=r"`labels` must have one label per image \(2\)\. Received: 3 labels"):
        litert.evaluate(path, np.zeros((2, *TINY_SHAPE), np.float32), [0, 1, 2])


def test_quantize_model_rejects_keras3_model():
    import keras

    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=10, keras_module=keras)
    with pytest.raises(ValueError, match=r"tf_keras"):
        export.quantize_model(model)


def test_quantize_model_rejects_memory_efficient_model():
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(8, 8, 1), classes=10, memory_efficient=True)
    with pytest.raises(ValueError, match=r"memory_efficient=True"):
        export.quantize_model(model)
