"""Export of DenseNet-121 to `.tflite` formats, conversion time and LiteRT latency.

Our model goes through `keras_densenet.export`: float32 and float16 from the float model, int8 from
the QAT model that `quantize_model` returns, with the kernel scales that `densenet-export` uses
for qat_int8 by default (`keras_densenet.export.job.DEFAULT_PER_CHANNEL_FORMATS`). keras.applications' DenseNet121 (Keras 3) goes through
the TFLite converter directly, with post-training full-integer int8 quantization calibrated on
random images. Random weights and random calibration data give meaningless predictions but the same
graph, op types and tensor sizes, which is what latency and file size depend on.
"""

import os
import statistics
import time

import numpy as np
import tensorflow as tf
from absl import logging

from keras_densenet import export
from keras_densenet.export import job
from keras_densenet.export import litert
from keras_densenet.utils import files


def export_ours(model, output_dir):
    """Convert our float model to float32, float16 and QAT int8 `.tflite` files in `output_dir`.

    Args:
        model: A float tf_keras model from `keras_densenet.DenseNet`.
        output_dir: Folder of the `.tflite` files; created when missing.

    Returns:
        A dict from format name (`"float32"`, `"float16"`, `"int8_qat"`) to a dict with `"path"`,
        `"file_bytes"` and `"convert_seconds"` (the `export.convert` call only). `"int8_qat"` also
        has `"quantize_model_seconds"`, the time `quantize_model` took to build the QAT model.
    """
    exported = {}
    for quantization in ("float32", "float16"):
        path = os.path.join(output_dir, f"ours_{quantization}.tflite")
        logging.info("Converting our model to %s", quantization)
        start = time.perf_counter()
        export.convert(model, path, quantization=quantization)
        exported[quantization] = {"path": path, "convert_seconds": time.perf_counter() - start}

    logging.info("Building the QAT model")
    start = time.perf_counter()
    per_channel = "qat_int8" in job.DEFAULT_PER_CHANNEL_FORMATS
    qat_model = export.quantize_model(model, per_channel=per_channel)
    quantize_model_seconds = time.perf_counter() - start
    path = os.path.join(output_dir, "ours_int8_qat.tflite")
    logging.info("Converting the QAT model to int8")
    start = time.perf_counter()
    export.convert(qat_model, path, quantization="qat_int8", per_channel=per_channel)
    exported["int8_qat"] = {
        "path": path,
        "convert_seconds": time.perf_counter() - start,
        "quantize_model_seconds": quantize_model_seconds,
    }
    for result in exported.values():
        result["file_bytes"] = os.path.getsize(result["path"])
    return exported


def export_applications_ptq_int8(model, path, calibration_images):
    """Convert a Keras 3 model to a full-integer int8 `.tflite` file by post-training quantization.

    The int8 settings equal `keras_densenet.export.convert(..., quantization="int8")`: only int8
    builtin ops, int8 input and output, one image per calibration step.

    Args:
        model: A Keras 3 model with one image input of static height, width and channels.
        path: Destination `.tflite` file, written atomically.
        calibration_images: Float32 array `(num_images, height, width, channels)`.

    Returns:
        A dict with `"path"`, `"file_bytes"` and `"convert_seconds"` (calibration included).
    """

    def representative_dataset():
        for image in calibration_images:
            yield [image[np.newaxis].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)  # Accepts Keras 3 models in TensorFlow 2.21.
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    converter.representative_dataset = representative_dataset
    logging.info("Converting keras.applications' model to int8 with %d calibration images", len(calibration_images))
    start = time.perf_counter()
    flatbuffer = converter.convert()
    convert_seconds = time.perf_counter() - start
    files.write_bytes_atomic(path, flatbuffer)
    return {"path": path, "file_bytes": os.path.getsize(path), "convert_seconds": convert_seconds}


def _random_input(details, rng):
    shape = details["shape"]
    if np.issubdtype(details["dtype"], np.integer):
        info = np.iinfo(details["dtype"])
        return rng.integers(info.min, info.max, shape, endpoint=True).astype(details["dtype"])
    return rng.normal(0.0, 1.0, shape).astype(details["dtype"])


def measure_latencies(paths, num_threads, warmup_runs, runs, rounds, seed=0):
    """Time single-image inference of `.tflite` files in LiteRT with its default XNNPACK delegate.

    All interpreters are loaded and warmed up first. Then each of `rounds` rounds times `runs`
    `invoke` calls of every model in turn, so load from other processes spreads over all models.

    Args:
        paths: Dict from label to `.tflite` file.
        num_threads: CPU threads of every interpreter.
        warmup_runs: Untimed `invoke` calls per model before timing.
        runs: Timed `invoke` calls per model and round.
        rounds: Number of rounds.
        seed: Seed of the random input images.

    Returns:
        A dict from label to a dict with `"median_ms"` and `"min_ms"` over all timed calls.
    """
    rng = np.random.default_rng(seed)
    interpreters = {}
    for label, path in paths.items():
        interpreter = litert.load_interpreter(path, num_threads=num_threads)
        details = interpreter.get_input_details()[0]
        interpreter.set_tensor(details["index"], _random_input(details, rng))
        for _ in range(warmup_runs):
            interpreter.invoke()
        interpreters[label] = interpreter

    times_ms = {label: [] for label in paths}
    for _ in range(rounds):
        for label, interpreter in interpreters.items():
            for _ in range(runs):
                start = time.perf_counter()
                interpreter.invoke()
                times_ms[label].append((time.perf_counter() - start) * 1000.0)
    return {
        label: {"median_ms": statistics.median(values), "min_ms": min(values)} for label, values in times_ms.items()
    }
