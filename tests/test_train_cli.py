"""Tests of the densenet-train and densenet-evaluate scripts, run as child processes."""

import json
import os
import subprocess
import sys

import pytest

from keras_densenet import data

TIMEOUT_SECONDS = 180

# Runs a script's main() on two logical CPU devices, which must be configured before TensorFlow starts.
TWO_CPU_MAIN = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_densenet.cli import train
sys.argv = ["densenet-train"] + sys.argv[1:]
train.main()
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tfds"))
    data.get_dataset_info("digits", data_dir=folder)
    return folder


def run_script(module, *args):
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=TIMEOUT_SECONDS
    )


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith(("Error:", "FATAL Flags parsing error"))]


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--epochs=0", "flag --epochs=0: 0 is not a positive integer"),
        ("--batch_size=-2", "flag --batch_size=-2"),
        ("--learning_rate=0", "flag --learning_rate=0.0: --learning_rate must be positive"),
        ("--dropout_rate=1.5", "flag --dropout_rate=1.5: --dropout_rate must be in [0, 1)"),
        ("--variant=nope", "flag --variant=nope: value should be one of"),
        ("--strategy=ps", "flag --strategy=ps: value should be one of <one_device|mirrored|multi_worker|tpu|default>"),
        ("--mixed_precision=float16", "flag --mixed_precision=float16: value should be one of"),
        ("--recipe=mnist", "flag --recipe=mnist: value should be one of <none|cifar|imagenet>"),
        ("--decay_fractions=0.75,0.5", "flag --decay_fractions=['0.75', '0.5']: --decay_fractions must be increasing"),
        ("--warmup_epochs=-1", "flag --warmup_epochs=-1"),
        ("--cluster_timeout=0", "flag --cluster_timeout=0"),
    ],
)
def test_train_rejects_bad_flag(tmp_path, flag, message):
    model_dir = tmp_path / "model"
    completed = run_script("keras_densenet.cli.train", f"--model_dir={model_dir}", flag)
    assert completed.returncode != 0
    assert any(message in line for line in error_lines(completed.stderr)), completed.stderr[-2000:]
    assert not model_dir.exists()


def test_train_rejects_unknown_dataset(tmp_path, data_dir):
    model_dir = tmp_path / "model"
    completed = run_script(
        "keras_densenet.cli.train", f"--model_dir={model_dir}", f"--data_dir={data_dir}", "--dataset=nope"
    )
    assert completed.returncode == 1
    lines = error_lines(completed.stderr)
    assert len(lines) == 1, completed.stderr[-2000:]
    assert "Received: dataset='nope'" in lines[0]
    assert not model_dir.exists()


def test_train_rejects_batch_not_divisible_by_replicas(tmp_path, data_dir):
    model_dir = tmp_path / "model"
    completed = subprocess.run(
        [sys.executable, "-c", TWO_CPU_MAIN, f"--model_dir={model_dir}", f"--data_dir={data_dir}",
         "--batch_size=3", "--strategy=mirrored"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    assert completed.returncode == 1
    lines = error_lines(completed.stderr)
    assert len(lines) == 1, completed.stderr[-2000:]
    assert "`batch_size` must be a multiple of the number of replicas (2)" in lines[0]
    assert "Received: batch_size=3" in lines[0]
    assert not model_dir.exists()


def test_evaluate_rejects_missing_run(tmp_path):
    completed = run_script("keras_densenet.cli.evaluate", f"--model_dir={tmp_path / 'missing'}")
    assert completed.returncode == 1
    lines = error_lines(completed.stderr)
    assert len(lines) == 1, completed.stderr[-2000:]
    assert "run densenet-train" in lines[0]


@pytest.mark.slow
def test_train_then_evaluate(tmp_path, data_dir):
    model_dir = tmp_path / "model"
    trained = run_script(
        "keras_densenet.cli.train",
        f"--model_dir={model_dir}",
        f"--data_dir={data_dir}",
        "--variant=densenet_bc22_k8",
        "--epochs=1",
        "--batch_size=32",
        "--take_train=128",
        "--seed=3",
        "--novalidate",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["variant"] == "densenet_bc22_k8"
    assert saved["seed"] == 3
    assert saved["dropout_rate"] == 0.2
    assert saved["validate"] is False

    evaluated = run_script("keras_densenet.cli.evaluate", f"--model_dir={model_dir}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert metrics["num_examples"] == 360
    assert metrics == pytest.approx(json.loads((model_dir / "evaluation.json").read_text()))
    assert os.path.isfile(model_dir / "model.h5")


# Prints the TrainConfig that the flags describe, without training.
PRINT_CONFIG = """
import sys
from absl import flags
from keras_densenet.cli import train
flags.FLAGS(["densenet-train"] + sys.argv[1:])
print(train.config_from_flags().to_json())
"""


def config_for_flags(*args):
    completed = subprocess.run(
        [sys.executable, "-c", PRINT_CONFIG, "--model_dir=/tmp/unused", *args],
        capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout)


def test_recipe_sets_paper_values():
    config = config_for_flags("--recipe=imagenet")
    assert config["recipe"] == "imagenet"
    assert (config["dataset"], config["variant"], config["epochs"], config["batch_size"]) == ("imagenet2012", "densenet121", 90, 256)
    assert config["decay_fractions"] == pytest.approx([1 / 3, 2 / 3])
    assert config["lr_reference_batch_size"] == 256
    assert config["learning_rate"] is None  # resolved to 0.1 * 256 / 256 at the start of training
    assert config["augment"] is True


def test_flags_override_recipe():
    config = config_for_flags("--recipe=cifar", "--epochs=40", "--batch_size=128", "--augment=false",
                              "--decay_fractions=0.4,0.8", "--learning_rate=0.2", "--warmup_epochs=1.5")
    assert (config["dataset"], config["epochs"], config["batch_size"], config["augment"]) == ("cifar10", 40, 128, False)
    assert config["decay_fractions"] == [0.4, 0.8]
    assert config["learning_rate"] == 0.2
    assert config["warmup_epochs"] == 1.5


def test_train_tpu_without_tpu_exits(tmp_path, data_dir):
    model_dir = tmp_path / "model"
    completed = run_script("keras_densenet.cli.train", f"--model_dir={model_dir}", f"--data_dir={data_dir}", "--strategy=tpu")
    assert completed.returncode == 1
    lines = error_lines(completed.stderr)
    assert len(lines) == 1, completed.stderr[-2000:]
    assert "`strategy=tpu` found no TPU attached to this host" in lines[0]
    assert lines[0].endswith("Received: tpu='local'")
    assert not model_dir.exists()


def test_train_rejects_malformed_tf_config(tmp_path, data_dir):
    model_dir = tmp_path / "model"
    completed = subprocess.run(
        [sys.executable, "-m", "keras_densenet.cli.train", f"--model_dir={model_dir}", f"--data_dir={data_dir}",
         "--strategy=multi_worker"],
        capture_output=True, text=True, timeout=TIMEOUT_SECONDS, env=dict(os.environ, TF_CONFIG="{not json"),
    )
    assert completed.returncode == 1
    lines = error_lines(completed.stderr)
    assert len(lines) == 1, completed.stderr[-2000:]
    assert "TF_CONFIG is not valid JSON" in lines[0]
    assert lines[0].endswith("Received: TF_CONFIG='{not json'")
    assert not model_dir.exists()
