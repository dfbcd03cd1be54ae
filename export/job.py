"""The export job: QAT fine-tuning of a densenet-train run, conversion to .tflite files, evaluation.

`run(ExportConfig(...))` loads `{model_dir}/model.h5`, fine-tunes a quantization-aware copy on the training
split, saves it as `{output_dir}/qat_model.h5`, converts to every requested format
(`{output_dir}/model_{format}.tflite`), evaluates each file with the LiteRT interpreter on the test
split, and writes the results to `{output_dir}/export.json`.

The `densenet-export` script is a thin flag layer over `run`.
"""

import dataclasses
import json
import os
from typing import Optional, Tuple

import numpy as np
from absl import logging

from keras_densenet.utils import files
from keras_densenet.utils import report

DEFAULT_FORMATS = ("float32", "float16", "int8")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Every setting of one export run.

    Attributes:
        model_dir: Folder of a finished densenet-train run, with model.h5 and config.json.
        output_dir: Folder of the outputs; `None` means `{model_dir}/export`.
        formats: Conversion types, each one of `keras_densenet.export.QUANTIZATION_TYPES`.
        qat_epochs: Epochs of QAT fine-tuning on the training split. Must be at least 1 when
            `formats` contains `"int8"`, because the fake-quant ranges are learned then.
        learning_rate: Learning rate of QAT fine-tuning (SGD with Nesterov momentum 0.9).
        batch_size: Batch size of fine-tuning and evaluation.
        data_dir: TFDS data folder; `None` uses the run's.
        manual_dir: Folder of manually downloaded archives; `None` uses the run's.
        take_train: Fine-tune on only this many training examples; `None` uses the whole split.
        take_test: Evaluate on only this many test examples; `None` uses the whole split.
        seed: Seed of the fine-tuning shuffle order and augmentation.
    """

    model_dir: str
    output_dir: Optional[str] = None
    formats: Tuple[str, ...] = DEFAULT_FORMATS
    qat_epochs: int = 1
    learning_rate: float = 1e-3
    batch_size: int = 64
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    take_train: Optional[int] = None
    take_test: Optional[int] = None
    seed: int = 0


def check_config(config):
    from keras_densenet.export import QUANTIZATION_TYPES

    formats = tuple(config.formats)
    unknown = [name for name in formats if name not in QUANTIZATION_TYPES]
    if not formats or unknown:
        raise ValueError(
            f"`formats` must be a non-empty list of {QUANTIZATION_TYPES}. Received: formats={list(formats)}"
        )
    if len(set(formats)) != len(formats):
        raise ValueError(f"`formats` must not repeat a format. Received: formats={list(formats)}")
    if config.qat_epochs < 0 or ("int8" in formats and config.qat_epochs < 1):
        raise ValueError(
            "`qat_epochs` must be at least 1 to export int8, because QAT learns the int8 ranges "
            f"during fine-tuning. Received: qat_epochs={config.qat_epochs}"
        )
    if not config.learning_rate > 0:
        raise ValueError(f"`learning_rate` must be positive. Received: learning_rate={config.learning_rate}")
    if config.batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={config.batch_size}")
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


def _load_float_model(model_path):
    import tf_keras

    try:
        return tf_keras.models.load_model(model_path, compile=False)
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ValueError(
            f"`model_dir` has an invalid model.h5 ({reason}); rerun densenet-train. Received: path={model_path!r}"
        ) from error


def _outputs_are_probabilities(model):
    import tf_keras

    activation = getattr(model.layers[-1], "activation", None)
    return activation is not None and tf_keras.activations.serialize(activation) == "softmax"


def _fine_tune(model, info, config, train_config, validation_data):
    """Return the QAT copy of `model` after `config.qat_epochs` epochs on the training split, and its history.

    The history dict has per-epoch `loss`, `accuracy`, `val_loss` and `val_accuracy` lists, the
    validation metrics measured on `validation_data`, an `(images, labels)` pair.
    """
    # NOTE: fine-tuning runs outside any tf.distribute strategy, on the default device.
    import tf_keras

    from keras_densenet import data
    from keras_densenet.export import quantize

    qat = quantize.quantize_model(model)
    qat.compile(
        optimizer=tf_keras.optimizers.SGD(config.learning_rate, momentum=0.9, nesterov=True),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=not _outputs_are_probabilities(model)),
        metrics=["accuracy"],
    )
    if config.qat_epochs:
        train = data.make_dataset(
            info,
            info.train_split,
            config.batch_size,
            training=True,
            augment=train_config.get("augment"),
            seed=config.seed,
            data_dir=config.data_dir or train_config.get("data_dir"),
            manual_dir=config.manual_dir or train_config.get("manual_dir"),
            take=config.take_train,
        )
        logging.info("QAT fine-tuning for %s epochs at learning rate %s", config.qat_epochs, config.learning_rate)
        history = qat.fit(train, epochs=config.qat_epochs, validation_data=validation_data, verbose="auto")
        return qat, {key: [float(value) for value in values] for key, values in history.history.items()}
    return qat, {}


def _test_arrays(info, config, train_config):
    from keras_densenet import data

    test = data.make_dataset(
        info,
        info.test_split,
        config.batch_size,
        training=False,
        data_dir=config.data_dir or train_config.get("data_dir"),
        manual_dir=config.manual_dir or train_config.get("manual_dir"),
        drop_remainder=False,
        take=config.take_test,
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
    ("int8", "TFLite int8"),
)
_TABLE_COLUMNS = (
    ("model", "model", ""),
    ("top1", "top-1", ".2%"),
    ("agreement", "top-1 agreement with Keras float32", ".2%"),
    ("num_float_ops", "float32 ops", "d"),
    ("file_bytes", "file bytes", ",d"),
)


def results_table(results):
    """Return the Markdown table of the per-model rows in the results of `run`."""
    rows = [{"model": label, **results[key]} for key, label in RESULT_ROWS if key in results]
    return report.markdown_table(rows, _TABLE_COLUMNS)


def run(config):
    """Fine-tune with QAT, convert to every format in `config.formats` and evaluate each file.

    Args:
        config: An `ExportConfig`.

    Returns:
        A dict with `"keras"` and `"qat"` (top-1 of the float and QAT Keras models), one entry per
        format with the `keras_densenet.export.evaluate` results plus `"path"` and
        `"num_float_ops"` (length of `float_compute_ops`), `"num_test_examples"`, and
        `"qat_history"` (per-epoch metrics of QAT fine-tuning, when int8 is exported). The same
        dict is written to `{output_dir}/export.json`.

    Raises:
        ValueError: on an invalid setting, a missing or empty `model_dir`, or an unreadable
            model.h5 or config.json in it.
    """
    check_config(config)
    model_path, train_config = _read_run(config.model_dir)

    from keras_densenet import data
    from keras_densenet import export

    output_dir = config.output_dir or os.path.join(config.model_dir, "export")
    info = data.get_dataset_info(
        train_config["dataset"],
        data_dir=config.data_dir or train_config.get("data_dir"),
        manual_dir=config.manual_dir or train_config.get("manual_dir"),
    )
    model = _load_float_model(model_path)
    logging.info("Loaded %s (%s) trained on %s", model_path, model.name, info.name)

    images, labels = _test_arrays(info, config, train_config)
    reference = model.predict(images, batch_size=config.batch_size, verbose=0)
    results = {"keras": {"top1": float(np.mean(np.argmax(reference, axis=-1) == labels))}}

    qat = None
    if "int8" in config.formats:
        qat, results["qat_history"] = _fine_tune(model, info, config, train_config, (images, labels))
        qat_path = os.path.join(output_dir, "qat_model.h5")
        export.save_qat_model(qat, qat_path)
        logging.info("Saved the QAT model to %s", qat_path)
        qat_outputs = qat.predict(images, batch_size=config.batch_size, verbose=0)
        results["qat"] = {
            "top1": float(np.mean(np.argmax(qat_outputs, axis=-1) == labels)),
            "agreement": float(np.mean(np.argmax(qat_outputs, axis=-1) == np.argmax(reference, axis=-1))),
        }

    for quantization in config.formats:
        path = os.path.join(output_dir, f"model_{quantization}.tflite")
        source = qat if quantization == "int8" else model
        logging.info("Converting to %s: %s", quantization, path)
        export.convert(source, path, quantization=quantization)
        result = export.evaluate(path, images, labels, reference_outputs=reference, batch_size=config.batch_size)
        result["path"] = path
        result["num_float_ops"] = len(export.float_compute_ops(path))
        results[quantization] = result

    results["num_test_examples"] = int(len(labels))
    files.write_json_atomic(os.path.join(output_dir, "export.json"), results)
    logging.info("Results on %s test examples:\n%s", len(labels), results_table(results))
    return results
