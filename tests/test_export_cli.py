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
        latency_runs=3,
        learning_rate=1e-3,
        batch_size=32,
        take_train=256,
        take_test=128,
    )

    results = export_job.run(config)
    print(json.dumps(results, sort_keys=True))  # Shown by pytest when an assertion below fails.

    assert sorted(os.listdir(output_dir)) == [
        "export.json",
        "export.md",
        "export_formats.png",
        "model_float32.compatibility.json",
        "model_float32.json",
        "model_float32.tflite",
        "model_qat_int8.compatibility.json",
        "model_qat_int8.json",
        "model_qat_int8.tflite",
        "qat_model.h5",
    ]
    with open(output_dir / "export.json") as f:
        assert json.load(f) == results
    assert results["num_test_examples"] == 128
    assert results["keras"]["top1"] >= 0.8, results  # 10 digit classes: chance is 0.1
    assert results["float32"]["top1"] == pytest.approx(results["keras"]["top1"], abs=1 / 128), results
    assert results["float32"]["agreement"] >= 0.99, results
    assert results["float32"]["num_float_ops"] > 0, results
    assert results["qat_int8"]["num_float_ops"] == 0, results
    assert results["qat_int8"]["agreement"] >= 0.85, results
    assert results["qat_int8"]["file_bytes"] < results["float32"]["file_bytes"], results
    assert results["float32"]["mean_abs_difference"] < 1e-5, results
    assert 0 < results["qat_int8"]["mean_abs_difference"] < 0.1, results
    for name in ("float32", "qat_int8"):
        assert sorted(results[name]["latency_ms"]) == ["1", "2"], results[name]
        assert all(0 < value < 1000 for value in results[name]["latency_ms"].values()), results[name]
    assert results["settings"]["formats"] == ["float32", "qat_int8"]
    # The defaults: QAT kernels per tensor, intermediate tensor names stripped.
    assert results["settings"]["per_channel_formats"] == []
    assert results["qat_int8"]["weight_scales"] == "per tensor"
    assert "weight_scales" not in results["float32"]
    assert results["settings"]["keep_tensor_names"] is False
    with open(output_dir / "model_qat_int8.json") as f:
        sidecar = json.load(f)
    assert sidecar["normalization"] == "sidecar"
    assert sidecar["input_shape"] == [8, 8, 1]
    assert sidecar["label_names"] == [str(digit) for digit in range(10)]
    assert sidecar["mean"] == pytest.approx([0.3052609])
    with open(output_dir / "model_qat_int8.compatibility.json") as f:
        compatibility = json.load(f)
    assert compatibility["float32_ops"] == []
    assert compatibility["edgetpu"]["static_shapes"]["passed"] is False  # The CPU target keeps the batch dynamic.
    with open(output_dir / "export.md") as f:
        assert "| TFLite QAT int8 |" in f.read()


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

    with pytest.raises(ValueError, match=r"model\.h5 is not a readable tf_keras HDF5 model.*densenet-train.*Received: model_dir="):
        export_job.run(export_job.ExportConfig(model_dir=str(tmp_path)))
    assert not os.path.exists(tmp_path / "export")


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"formats": ("int4",)}, r"`formats` must be a non-empty list of .*Received: formats=\['int4'\]"),
        ({"formats": ()}, r"`formats` must be a non-empty list"),
        ({"formats": ("int8", "qat_int8")}, r"`formats` must not repeat a format or its alias"),
        ({"qat_epochs": 0}, r"`qat_epochs` must be at least 1 to export qat_int8.*Received: qat_epochs=0"),
        ({"input_type": "int16"}, r"`input_type` must be one of \('int8', 'uint8', 'float32'\)\. Received: input_type='int16'"),
        ({"formats": ("float16",), "output_type": "uint8"}, r"`output_type` can be int8 or uint8 only for the full-integer formats"),
        ({"target": "gpu"}, r"`target` must be one of \('cpu', 'edgetpu'\)\. Received: target='gpu'"),
        ({"target": "edgetpu"}, r"`target='edgetpu'` needs a full-integer format.*Received: quantization='float32'"),
        ({"normalization": "none"}, r"`normalization` must be one of \('sidecar', 'baked'\)\. Received: normalization='none'"),
        ({"latency_runs": -1}, r"`latency_runs` must be 0 or more\. Received: latency_runs=-1"),
        ({"latency_threads": (0,)}, r"`latency_threads` must be a non-empty list of positive integers"),
        ({"num_calibration_batches": 0}, r"`num_calibration_batches` must be a positive integer"),
        ({"learning_rate": 0.0}, r"`learning_rate` must be positive\. Received: learning_rate=0\.0"),
        ({"batch_size": 0}, r"`batch_size` must be a positive integer\. Received: batch_size=0"),
        ({"take_test": 0}, r"`take_test` must be None or a positive integer\. Received: take_test=0"),
        (
            {"per_channel_formats": ("float16",)},
            r"`per_channel_formats` may name only the full-integer formats .*Received: per_channel_formats=\['float16'\]",
        ),
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
    assert "--formats must be a comma-separated list of float32,float16,dynamic_int8,ptq_int8,qat_int8,int8" in completed.stderr
    assert "int4" in completed.stderr


def test_script_rejects_unknown_io_type(tmp_path):
    completed = run_script(f"--model_dir={tmp_path}", "--input_type=int16")

    assert completed.returncode != 0
    assert "--input_type" in completed.stderr
    assert "value should be one of <int8|uint8|float32>" in completed.stderr, completed.stderr[-1000:]


def test_script_rejects_float_per_channel_format(tmp_path):
    completed = run_script(f"--model_dir={tmp_path}", "--per_channel_formats=float32")

    assert completed.returncode != 0
    assert "--per_channel_formats must be a comma-separated list of ptq_int8,qat_int8,int8, or empty" in completed.stderr
    assert os.listdir(tmp_path) == []


def test_script_rejects_edgetpu_float_format(tmp_path):
    completed = run_script(f"--model_dir={tmp_path}", "--target=edgetpu", "--formats=float16")

    assert completed.returncode == 1, completed.stderr[-2000:]
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("Error: `target='edgetpu'` needs a full-integer format"), last_line
    assert "executes only int8 and uint8 tensors" in last_line
