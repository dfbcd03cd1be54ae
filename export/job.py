"""The export job: QAT fine-tuning of a densenet-train run, conversion to every format, evaluation.

`run(ExportConfig(...))` loads `{model_dir}/model.h5` and writes into `{output_dir}`:

    qat_model.h5                        the QAT fine-tuned model (when qat_int8 is exported)
    model_{format}.tflite               one file per format
    model_{format}.json                 its sidecar: input size, normalization, label names
    model_{format}.compatibility.json   its compatibility report (ops, dtypes, Edge TPU checks)
    export.json                         every result of the run
    export.md                           the results table
    export_formats.png                  top-1 against file size and latency per format

Every `.tflite` file is evaluated on the test split in the LiteRT interpreter from raw pixels,
normalized as its sidecar describes, against the float Keras model.

The `densenet-export` script is a thin flag layer over `run`.
"""

import dataclasses
import io
import json
import os
from typing import Optional, Tuple

import numpy as np
from absl import logging

from keras_densenet.utils import files
from keras_densenet.utils import report

DEFAULT_FORMATS = ("float32", "float16", "dynamic_int8", "ptq_int8", "qat_int8")
# QAT learns its ranges with the int8 kernels in the loop, so one scale per tensor costs it little and
# saves 24 bytes per output channel. Post-training quantization cannot adapt, so it keeps one per channel.
DEFAULT_PER_CHANNEL_FORMATS = ("ptq_int8",)
NORMALIZATION_MODES = ("sidecar", "baked")
DEFAULT_LATENCY_THREADS = (1, 2)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Every setting of one export run.

    Attributes:
        model_dir: Folder of a finished densenet-train run, with model.h5 and config.json.
        output_dir: Folder of the outputs; `None` means `{model_dir}/export`.
        formats: Formats to export, each a name from `keras_densenet.export.QUANTIZATION_TYPES`
            or the alias `"int8"` (of `"qat_int8"`).
        input_type: Input tensor type of the full-integer formats (ptq_int8, qat_int8): `"int8"`,
            `"uint8"` or `"float32"`; `None` means int8. Other formats always take float32.
        output_type: As `input_type`, for the output tensor.
        target: `"cpu"` (dynamic batch dimension) or `"edgetpu"` (static `[1, H, W, C]` input;
            full-integer formats only).
        per_channel_formats: The full-integer formats whose convolution kernels get one int8
            scale per output channel; the others get one scale per tensor. See
            `keras_densenet.export.quantize_model`.
        keep_tensor_names: Keep the names of intermediate tensors in the `.tflite` files; by
            default they are stripped (`keras_densenet.export.strip_tensor_names`).
        normalization: `"sidecar"`: the model takes normalized images and the sidecar JSON gives
            the mean and std to apply. `"baked"`: the model takes raw pixels (0..255) and
            normalizes them itself.
        qat_epochs: Epochs of QAT fine-tuning on the training split. Must be at least 1 when
            `formats` contains `"qat_int8"`, because the fake-quant ranges are learned then.
        learning_rate: Learning rate of QAT fine-tuning (SGD with Nesterov momentum 0.9).
        batch_size: Batch size of fine-tuning, calibration and evaluation.
        num_calibration_batches: Batches of the training split (without augmentation) that
            calibrate ptq_int8.
        latency_runs: Timed single-image runs per file and thread count; 0 skips the latency.
        latency_threads: Thread counts at which latency is measured.
        data_dir: TFDS data folder; `None` uses the run's.
        manual_dir: Folder of manually downloaded archives; `None` uses the run's.
        take_train: Fine-tune and calibrate on only this many training examples; `None` uses the
            whole split.
        take_test: Evaluate on only this many test examples; `None` uses the whole split.
        seed: Seed of the fine-tuning shuffle order and augmentation.
    """

    model_dir: str
    output_dir: Optional[str] = None
    formats: Tuple[str, ...] = DEFAULT_FORMATS
    input_type: Optional[str] = None
    output_type: Optional[str] = None
    target: str = "cpu"
    per_channel_formats: Tuple[str, ...] = DEFAULT_PER_CHANNEL_FORMATS
    keep_tensor_names: bool = False
    normalization: str = "sidecar"
    qat_epochs: int = 1
    learning_rate: float = 1e-3
    batch_size: int = 64
    num_calibration_batches: int = 100
    latency_runs: int = 50
    latency_threads: Tuple[int, ...] = DEFAULT_LATENCY_THREADS
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    take_train: Optional[int] = None
    take_test: Optional[int] = None
    seed: int = 0


def canonical_formats(formats):
    """Return `formats` with aliases resolved, or raise ValueError on an unknown or repeated one."""
    from keras_densenet import export

    formats = tuple(formats)
    accepted = export.QUANTIZATION_TYPES + tuple(export.FORMAT_ALIASES)
    if not formats or any(name not in accepted for name in formats):
        raise ValueError(
            f"`formats` must be a non-empty list of {accepted} (int8 is an alias of qat_int8). "
            f"Received: formats={list(formats)}"
        )
    canonical = tuple(export.canonical_format(name) for name in formats)
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"`formats` must not repeat a format or its alias. Received: formats={list(formats)}")
    return canonical


def check_config(config):
    """Check every setting of `config` before any file is read or written.

    Raises:
        ValueError: naming the first invalid setting.
    """
    from keras_densenet import export

    formats = canonical_formats(config.formats)
    has_integer_format = any(name in export.INTEGER_TYPES for name in formats)
    for name in formats:
        if name in export.INTEGER_TYPES or not has_integer_format:
            # Without a full-integer format an int8 or uint8 input or output type would be ignored.
            export.check_options(name, config.input_type, config.output_type, config.target)
        else:
            export.check_options(name, target=config.target)
    per_channel_formats = tuple(config.per_channel_formats)
    for name in per_channel_formats:
        if name not in export.INTEGER_TYPES + ("int8",):
            raise ValueError(
                f"`per_channel_formats` may name only the full-integer formats {export.INTEGER_TYPES}, "
                f"because only they quantize kernels to int8 with a scale. Received: per_channel_formats={list(per_channel_formats)}"
            )
    if config.normalization not in NORMALIZATION_MODES:
        raise ValueError(
            f"`normalization` must be one of {NORMALIZATION_MODES}. Received: normalization={config.normalization!r}"
        )
    if config.qat_epochs < 0 or ("qat_int8" in formats and config.qat_epochs < 1):
        raise ValueError(
            "`qat_epochs` must be at least 1 to export qat_int8, because QAT learns the int8 ranges "
            f"during fine-tuning. Received: qat_epochs={config.qat_epochs}"
        )
    if not config.learning_rate > 0:
        raise ValueError(f"`learning_rate` must be positive. Received: learning_rate={config.learning_rate}")
    for name in ("batch_size", "num_calibration_batches"):
        value = getattr(config, name)
        if value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value}")
    if config.latency_runs < 0:
        raise ValueError(f"`latency_runs` must be 0 or more. Received: latency_runs={config.latency_runs}")
    if not config.latency_threads or any(threads < 1 for threads in config.latency_threads):
        raise ValueError(
            f"`latency_threads` must be a non-empty list of positive integers. "
            f"Received: latency_threads={list(config.latency_threads)}"
        )
    for name in ("take_train", "take_test"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"`{name}` must be None or a positive integer. Received: {name}={value}")


def _read_run(model_dir):
    """Check `model_dir` and return the path of its model.h5 and the parsed dict of its config.json."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir) or not os.listdir(model_dir):
        state = "is empty" if os.path.isdir(model_dir) else "does not exist"
        raise ValueError(
            f"`model_dir` {state}; run densenet-train with --model_dir={model_dir} first. "
            f"Received: model_dir={model_dir!r}"
        )
    model_path = os.path.join(model_dir, "model.h5")
    config_path = os.path.join(model_dir, "config.json")
    for path in (model_path, config_path):
        if not os.path.isfile(path):
            raise ValueError(
                f"`model_dir` has no {os.path.basename(path)}; finish the run with densenet-train first. "
                f"Received: model_dir={model_dir!r}"
            )
    try:
        with open(config_path, encoding="utf-8") as f:
            train_config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"`model_dir` has an invalid config.json ({error}); rerun densenet-train. Received: model_dir={model_dir!r}"
        ) from error
    if not isinstance(train_config, dict) or "dataset" not in train_config:
        raise ValueError(
            f"`model_dir` has a config.json without a dataset; rerun densenet-train. Received: model_dir={model_dir!r}"
        )
    return model_path, train_config


def _outputs_are_probabilities(model):
    import tf_keras

    activation = getattr(model.layers[-1], "activation", None)
    return activation is not None and tf_keras.activations.serialize(activation) == "softmax"


def _dataset_kwargs(config, train_config):
    return {
        "data_dir": config.data_dir or train_config.get("data_dir"),
        "manual_dir": config.manual_dir or train_config.get("manual_dir"),
    }


def _to_pixels(dataset, info):
    """Map the normalized images of an `(images, labels)` dataset back to raw pixels 0..255."""
    import tensorflow as tf

    mean = tf.constant(info.mean, tf.float32)
    std = tf.constant(info.std, tf.float32)
    return dataset.map(lambda images, labels: ((images * std + mean) * 255.0, labels))


def _fine_tune(model, info, config, train_config, validation_data):
    """Return the QAT copy of `model` after `config.qat_epochs` epochs on the training split, and its history.

    The history dict has per-epoch `loss`, `accuracy`, `val_loss` and `val_accuracy` lists, the
    validation metrics measured on `validation_data`, an `(images, labels)` pair.
    """
    # NOTE: fine-tuning runs outside any tf.distribute strategy, on the default device.
    import tf_keras

    from keras_densenet import data
    from keras_densenet.export import quantize

    qat = quantize.quantize_model(model, per_channel=_per_channel("qat_int8", config))
    qat.compile(
        optimizer=tf_keras.optimizers.SGD(config.learning_rate, momentum=0.9, nesterov=True),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=not _outputs_are_probabilities(model)),
        metrics=["accuracy"],
    )
    train = data.make_dataset(
        info,
        info.train_split,
        config.batch_size,
        training=True,
        augment=train_config.get("augment"),
        seed=config.seed,
        take=config.take_train,
        **_dataset_kwargs(config, train_config),
    )
    if config.normalization == "baked":
        train = _to_pixels(train, info)
    logging.info("QAT fine-tuning for %s epochs at learning rate %s", config.qat_epochs, config.learning_rate)
    history = qat.fit(train, epochs=config.qat_epochs, validation_data=validation_data, verbose="auto")
    return qat, {key: [float(value) for value in values] for key, values in history.history.items()}


def _calibration_dataset(info, config, train_config):
    """Return the training split preprocessed as for evaluation (no augmentation), for ptq_int8."""
    from keras_densenet import data

    calibration = data.make_dataset(
        info,
        info.train_split,
        config.batch_size,
        training=False,
        drop_remainder=False,
        take=config.take_train,
        **_dataset_kwargs(config, train_config),
    )
    if config.normalization == "baked":
        calibration = _to_pixels(calibration, info)
    return calibration


def _test_arrays(info, config, train_config):
    from keras_densenet import data

    test = data.make_dataset(
        info,
        info.test_split,
        config.batch_size,
        training=False,
        drop_remainder=False,
        take=config.take_test,
        **_dataset_kwargs(config, train_config),
    )
    images, labels = [], []
    for image_batch, label_batch in test.as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    if not images:
        raise ValueError(f"The test split of {info.name} is empty. Received: take_test={config.take_test}")
    return np.concatenate(images), np.concatenate(labels)


# Rows of the results table: (key in the results of `run`, label), and its columns.
RESULT_ROWS = (
    ("keras", "Keras float32"),
    ("qat", "Keras QAT"),
    ("float32", "TFLite float32"),
    ("float16", "TFLite float16"),
    ("dynamic_int8", "TFLite dynamic-range int8"),
    ("ptq_int8", "TFLite PTQ int8"),
    ("qat_int8", "TFLite QAT int8"),
)
_TABLE_COLUMNS = (
    ("model", "model", ""),
    ("top1", "top-1", ".2%"),
    ("agreement", "top-1 agreement with Keras float32", ".2%"),
    ("mean_abs_difference", "mean abs. probability difference", ".4f"),
    ("num_float_ops", "float32 ops", "d"),
    ("file_bytes", "file bytes", ",d"),
    ("size_ratio", "size / float32", ".1%"),
    ("weight_scales", "int8 kernel scales", ""),
    ("latency_ms_1_thread", "ms/image, 1 thread", ".3f"),
    ("latency_ms_2_threads", "ms/image, 2 threads", ".3f"),
    ("edgetpu_ready", "Edge TPU ready", ""),
)


def _table_row(results, key, label):
    row = {"model": label, **results[key]}
    latency = row.get("latency_ms") or {}
    row["latency_ms_1_thread"] = latency.get("1")
    row["latency_ms_2_threads"] = latency.get("2")
    float32_bytes = results.get("float32", {}).get("file_bytes")
    if "file_bytes" in row and float32_bytes:
        row["size_ratio"] = row["file_bytes"] / float32_bytes
    if "edgetpu_ready" in row:
        row["edgetpu_ready"] = "yes" if row["edgetpu_ready"] else "no"
    return row


def results_table(results):
    """Return the Markdown table of the per-model rows in the results of `run`."""
    rows = [_table_row(results, key, label) for key, label in RESULT_ROWS if key in results]
    return report.markdown_table(rows, _TABLE_COLUMNS)


def plot_formats(path, results):
    """Plot top-1 against file size and against 1-thread latency per format into a PNG, atomically.

    Args:
        path: Output `.png` path.
        results: The dict that `run` returns.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)  # NOTE: selects the non-interactive backend for the process.
    from matplotlib import pyplot

    rows = [(label, results[key]) for key, label in RESULT_ROWS if key in results and "file_bytes" in results[key]]
    figure, (size_axis, latency_axis) = pyplot.subplots(1, 2, figsize=(11, 4))
    # Formats often tie on top-1, so each gets its own marker and a legend entry instead of a text label.
    markers = "osD^v<>"
    for (label, row), marker in zip(rows, markers):
        name = label.replace("TFLite ", "")
        size_axis.scatter(row["file_bytes"] / 1024, row["top1"] * 100, marker=marker, s=60, alpha=0.8, label=name)
        latency = (row.get("latency_ms") or {}).get("1")
        if latency is not None:
            latency_axis.scatter(latency, row["top1"] * 100, marker=marker, s=60, alpha=0.8, label=name)
    size_axis.set_xlabel("file size (KiB)")
    latency_axis.set_xlabel("latency per image, 1 thread, XNNPACK (ms)")
    lowest = min((row["top1"] * 100 for _, row in rows), default=0.0)
    for axis in (size_axis, latency_axis):
        axis.set_ylim(max(0.0, lowest - 5.0), 100.5)  # top-1 cannot pass 100%.
        axis.set_ylabel("test top-1 (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"Formats on {results.get('num_test_examples', '?')} test images")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot.close(figure)
    files.write_bytes_atomic(path, buffer.getvalue())


def _per_channel(quantization, config):
    from keras_densenet import export

    return quantization in {export.canonical_format(name) for name in config.per_channel_formats}


def _export_one(quantization, source, path, config, info, calibration, test_pixels, labels, reference):
    """Convert, document, inspect, evaluate and time one format; return its results row."""
    from keras_densenet import export
    from keras_densenet.export import compatibility
    from keras_densenet.export import litert
    from keras_densenet.export import sidecar as sidecar_lib

    integer = quantization in export.INTEGER_TYPES
    input_type = config.input_type if integer else None
    output_type = config.output_type if integer else None
    quantization, input_type, output_type, target = export.check_options(
        quantization, input_type, output_type, config.target
    )
    logging.info("Converting to %s (input %s, output %s, target %s): %s", quantization, input_type, output_type, target, path)
    export.convert(
        source,
        path,
        quantization=quantization,
        representative_dataset=calibration if quantization == "ptq_int8" else None,
        num_calibration_batches=config.num_calibration_batches,
        input_type=input_type,
        output_type=output_type,
        target=target,
        per_channel=_per_channel(quantization, config),
        keep_tensor_names=config.keep_tensor_names,
    )
    sidecar = sidecar_lib.make_sidecar(
        config.normalization,
        info.mean,
        info.std,
        info.image_shape,
        info.label_names,
        format=quantization,
        target=target,
        input_type=input_type,
        output_type=output_type,
        dataset=info.name,
    )
    sidecar_lib.write_sidecar(path, sidecar)
    compatibility_report = compatibility.write_report(path)
    logging.info("Compatibility report:\n%s", compatibility.format_report(compatibility_report))

    result = litert.evaluate(path, test_pixels, labels, reference_outputs=reference, batch_size=config.batch_size, pixels=True)
    result["path"] = path
    result["input_type"] = input_type
    result["output_type"] = output_type
    if integer:
        result["weight_scales"] = "per channel" if _per_channel(quantization, config) else "per tensor"
    result["num_float_ops"] = len(litert.float_compute_ops(path))
    result["edgetpu_ready"] = compatibility_report["edgetpu"]["ready"]
    if config.latency_runs:
        result["latency_ms"] = {
            str(threads): litert.measure_latency(path, threads, num_runs=config.latency_runs)
            for threads in config.latency_threads
        }
    return result


def run(config):
    """Fine-tune with QAT, convert to every format in `config.formats` and evaluate each file.

    Args:
        config: An `ExportConfig`.

    Returns:
        A dict with `"keras"` and `"qat"` (top-1 of the float and QAT Keras models), one entry per
        format (canonical name) with the `keras_densenet.export.evaluate` results plus `"path"`,
        `"input_type"`, `"output_type"`, `"num_float_ops"` (length of `float_compute_ops`),
        `"edgetpu_ready"` and `"latency_ms"` (thread count to median milliseconds per image, when
        `latency_runs` is positive); `"num_test_examples"`, `"settings"` (target and
        normalization), and `"qat_history"` (per-epoch metrics of QAT fine-tuning, when
        qat_int8 is exported). The same dict is written to `{output_dir}/export.json`.

    Raises:
        ValueError: on an invalid setting, a missing or empty `model_dir`, or an unreadable
            model.h5 or config.json in it.
    """
    check_config(config)
    formats = canonical_formats(config.formats)
    model_path, train_config = _read_run(config.model_dir)

    from keras_densenet import data
    from keras_densenet import export
    from keras_densenet.export import sidecar as sidecar_lib
    from keras_densenet.training import evaluate

    output_dir = config.output_dir or os.path.join(config.model_dir, "export")
    info = data.get_dataset_info(train_config["dataset"], **_dataset_kwargs(config, train_config))
    # A float32 copy, so runs trained under mixed precision or a distribution strategy export alike.
    model = export.float32_copy(evaluate.load_trained_model(config.model_dir))
    if config.normalization == "baked":
        model = export.bake_normalization(model, info.mean, info.std)
    logging.info("Loaded %s (%s) trained on %s", model_path, model.name, info.name)

    images, labels = _test_arrays(info, config, train_config)
    test_pixels = sidecar_lib.pixels_from_normalized(images, info.mean, info.std)
    model_inputs = test_pixels if config.normalization == "baked" else images
    reference = model.predict(model_inputs, batch_size=config.batch_size, verbose=0)
    results = {"keras": {"top1": float(np.mean(np.argmax(reference, axis=-1) == labels))}}

    qat = None
    if "qat_int8" in formats:
        qat, results["qat_history"] = _fine_tune(model, info, config, train_config, (model_inputs, labels))
        qat_path = os.path.join(output_dir, "qat_model.h5")
        export.save_qat_model(qat, qat_path)
        logging.info("Saved the QAT model to %s", qat_path)
        qat_outputs = qat.predict(model_inputs, batch_size=config.batch_size, verbose=0)
        results["qat"] = {
            "top1": float(np.mean(np.argmax(qat_outputs, axis=-1) == labels)),
            "agreement": float(np.mean(np.argmax(qat_outputs, axis=-1) == np.argmax(reference, axis=-1))),
        }

    calibration = _calibration_dataset(info, config, train_config) if "ptq_int8" in formats else None
    for quantization in formats:
        path = os.path.join(output_dir, f"model_{quantization}.tflite")
        source = qat if quantization == "qat_int8" else model
        results[quantization] = _export_one(
            quantization, source, path, config, info, calibration, test_pixels, labels, reference
        )

    results["num_test_examples"] = int(len(labels))
    results["settings"] = {
        "formats": list(formats),
        "target": config.target,
        "normalization": config.normalization,
        "input_type": config.input_type,
        "output_type": config.output_type,
        "per_channel_formats": sorted(name for name in formats if _per_channel(name, config)),
        "keep_tensor_names": config.keep_tensor_names,
    }
    table = results_table(results)
    files.write_json_atomic(os.path.join(output_dir, "export.json"), results)
    files.write_text_atomic(os.path.join(output_dir, "export.md"), table)
    plot_formats(os.path.join(output_dir, "export_formats.png"), results)
    logging.info("Results on %s test examples:\n%s", len(labels), table)
    return results
