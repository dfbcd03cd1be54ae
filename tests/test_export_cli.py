"""Tests of the densenet-export script: run() on a small trained run, and its bad-input exits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tf_keras

import keras_densenet
from keras_densenet import data
from keras_densenet.export import job as export_job

TINY = "densenet_bc22_k8"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Create a densenet-train-like run folder: the tiny model fitted briefly on digits."""
    folder = tmp_path_factory.mktemp("run")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    info = data.get_dataset_info("digits", data_dir=data_dir)
    train = data.make_dataset(info, info.train_split, 32, training=True, augment=False, seed=0, data_dir=data_dir)

    tf_keras.utils.set_random_seed(0)
    model = keras_densenet.DenseNet(TINY, input_shape=info.image_shape, classes=info.num_classes)
    model.compile(optimizer=tf_keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(train, epochs=10, verbose=0)
    model.save(folder / "model.h5", include_optimizer=False, save_format="h5")
    config = {"dataset": "digits", "data_dir": data_dir, "variant": TINY, "augment": False}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.slow
def test_run_exports_and_evaluates(model_dir, tmp_path):
    output_dir = tmp_path / "export"
    config = export_job.ExportConfig(
        model_dir=str(model_dir),
        output_dir=str(output_dir),
        formats=("float32", "int8"),
        qat_epochs=1,
        learning_rate=1e-3,
        batch_size=32,
        take_train=256,
        take_test=128,
    )

    results = export_job.run(config)
    print(json.dumps(results, sort_keys=True))  # Shown by pytest when an assertion below fails.

    assert sorted(os.listdir(output_dir)) == ["export.json", "model_float32.tflite", "model_int8.tflite", "qat_model.h5"]
    with open(output_dir / "export.json") as f:
        assert json.load(f) == results
    assert results["num_test_examples"] == 128
    assert results["keras"]["top1"] >= 0.8, results  # 10 digit classes: chance is 0.1
    assert results["float32"]["top1"] == pytest.approx(results["keras"]["top1"], abs=1 / 128), results
    assert results["float32"]["agreement"] >= 0.99, results
    assert results["float32"]["num_float_ops"] > 0, results
    assert results["int8"]["num_float_ops"] == 0, results
    assert results["int8"]["agreement"] >= 0.85, results
    assert results["int8"]["file_bytes"] < results["float32"]["file_bytes"], results


def test_run_rejects_missing_model_dir(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=r"`model_dir` does not exist; run densenet-train .*Received: model_dir=.*missing"):
        export_job.run(export_job.ExportConfig(model_dir=str(missing)))
    assert os.listdir(tmp_path) == []


def test_run_rejects_empty_model_dir(tmp_path):
    with pytest.raises(ValueError, match=r"`model_dir` is empty; run densenet-train .*Received: model_dir="):
        export_job.run(export_job.ExportConfig(model_dir=str(tmp_path)))
    assert os.listdir(tmp_path) == []


def test_run_rejects_model_dir_without_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "digits"}))
    with pytest.raises(ValueError, match=r"`model_dir` has no model\.h5; finish the run with densenet-train first"):
        export_job.run(export_job.ExportConfig(model_dir=str(tmp_path)))


def test_run_rejects_corrupt_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "digits", "data_dir": str(tmp_path / "tfds")}))
    (tmp_path / "model.h5").write_bytes(np.random.default_rng(0).bytes(1000))

    with pytest.raises(ValueError, match=r"`model_dir` has an invalid model\.h5 .*rerun densenet-train\. Received: path=.*model\.h5"):
        export_job.run(export_job.ExportConfig(model_dir=str(tmp_path)))
    assert not os.path.exists(tmp_path / "export")


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"formats": ("int4",)}, r"`formats` must be a non-empty list of .*Received: formats=\['int4'\]"),
        ({"formats": ()}, r"`formats` must be a non-empty list"),
        ({"formats": ("int8", "int8")}, r"`formats` must not repeat a format"),
        ({"qat_epochs": 0}, r"`qat_epochs` must be at least 1 to export int8.*Received: qat_epochs=0"),
        ({"learning_rate": 0.0}, r"`learning_rate` must be positive\. Received: learning_rate=0\.0"),
        ({"batch_size": 0}, r"`batch_size` must be a positive integer\. Received: batch_size=0"),
        ({"take_test": 0}, r"`take_test` must be None or a positive integer\. Received: take_test=0"),
    ],
)
def test_run_rejects_bad_settings(tmp_path, changes, pattern):
    config = export_job.ExportConfig(model_dir=str(tmp_path), **changes)
    with pytest.raises(ValueError, match=pattern):
        export_job.run(config)


def run_script(*args):
    return subprocess.run(
        [sys.executable, "-m", "keras_densenet.cli.export", *args], capture_output=True, text=True, timeout=300
    )


def test_script_exits_on_empty_model_dir(tmp_path):
    completed = run_script(f"--model_dir={tmp_path}")

    assert completed.returncode == 1, completed.stderr[-2000:]
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("Error: `model_dir` is empty; run densenet-train"), last_line
    assert str(tmp_path) in last_line
    assert os.listdir(tmp_path) == []


def test_script_exits_on_missing_model_dir(tmp_path):
    missing = tmp_path / "missing"

    completed = run_script(f"--model_dir={missing}", "--formats=float32")

    assert completed.returncode == 1, completed.stderr[-2000:]
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("Error: `model_dir` does not exist"), last_line
    assert str(missing) in last_line
    assert not missing.exists()


def test_script_rejects_unknown_format(tmp_path):
    completed = run_script(f"--model_dir={tmp_path}", "--formats=float32,int4")

    assert completed.returncode != 0
    assert "--formats must be a comma-separated list of float32,float16,int8" in completed.stderr
    assert "int4" in completed.stderr
