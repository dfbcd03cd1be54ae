"""Tests of recovery from a killed worker, and of the stop on a NaN loss.

The two-worker runs happen in child processes, because a MultiWorkerMirroredStrategy must be created
before TensorFlow runs any operation.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from keras_densenet import data
from keras_densenet.training import train
from keras_densenet.training.config import TrainConfig

TIMEOUT_SECONDS = 120

# argv: model_dir, data_dir, weights output (.npz), and the epoch (0-based) in whose second step
# worker 1 kills itself with SIGKILL, or -1.
WORKER_RUN = """
import json, os, signal, sys
import numpy as np
import tf_keras
from keras_densenet.training import train
from keras_densenet.training.config import TrainConfig

model_dir, data_dir, weights_path, kill_epoch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
task_index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

class KillAt(tf_keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []
    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
    def on_train_batch_begin(self, batch, logs=None):
        if task_index == 1 and self.epochs[-1] == kill_epoch and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

recorder = KillAt()
config = TrainConfig(model_dir=model_dir, data_dir=data_dir, variant="densenet_bc22_k8", epochs=3, batch_size=32,
                     take_train=64, seed=0, dropout_rate=0.0, strategy="multi_worker", validate=False,
                     deterministic=True, cluster_timeout=60)
result = train.run(config, extra_callbacks=[recorder])
weights = result.model.get_weights()  # Reading some variables needs every worker.
if task_index == 0:
    np.savez(weights_path, *weights)
print(json.dumps({"epochs": recorder.epochs, "history_epochs": result.history["epoch"]}))
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tfds"))
    data.get_dataset_info("digits", data_dir=folder)  # Prepare once, so child processes only read.
    return folder


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_workers(model_dir, data_dir, weights_path, kill_epoch):
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER_RUN, model_dir, data_dir, weights_path, str(kill_epoch)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    return processes


def finish(processes):
    """Wait for every process and return their (stdout, stderr); kill the ones still running after the time-out."""
    try:
        return [process.communicate(timeout=TIMEOUT_SECONDS) for process in processes]
    finally:
        reap(processes)


def reap(processes):
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def last_json_line(output):
    lines = [line for line in output.splitlines() if line.startswith("{")]
    assert lines, output[-3000:]
    return json.loads(lines[-1])


def load_weights(path):
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


@pytest.mark.slow
def test_killed_worker_resumes_to_same_weights(tmp_path, data_dir):
    # An uninterrupted run.
    reference_dir = str(tmp_path / "reference")
    reference_weights = str(tmp_path / "reference.npz")
    outputs = finish(start_workers(reference_dir, data_dir, reference_weights, kill_epoch=-1))
    assert last_json_line(outputs[0][0])["history_epochs"] == [1, 2, 3], outputs[0][1][-3000:]

    # The same run, with worker 1 killed in the second step of epoch 1 (0-based); then the chief,
    # which waits for it, is killed too.
    model_dir = str(tmp_path / "model")
    weights = str(tmp_path / "resumed.npz")
    processes = start_workers(model_dir, data_dir, weights, kill_epoch=1)
    try:
        processes[1].wait(timeout=TIMEOUT_SECONDS)
    finally:
        reap(processes)
    assert processes[1].returncode == -signal.SIGKILL, processes[1].stderr.read()[-3000:]
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "backup", "chief"))
    assert not os.path.exists(os.path.join(model_dir, "model.h5"))

    # Restart both: they resume after epoch 0 from the backup and finish.
    outputs = finish(start_workers(model_dir, data_dir, weights, kill_epoch=-1))
    chief, other = (last_json_line(stdout) for stdout, _ in outputs)
    assert chief["epochs"] == [1, 2]
    assert other["epochs"] == [1, 2]
    assert chief["history_epochs"] == [1, 2, 3]

    resumed, reference = load_weights(weights), load_weights(reference_weights)
    assert len(resumed) == len(reference)
    for resumed_weight, reference_weight in zip(resumed, reference):
        np.testing.assert_allclose(resumed_weight, reference_weight, rtol=0, atol=1e-5)

    expected = ["backup", "checkpoints", "config.json", "evaluation.json", "history.json", "logs", "model.h5"]
    assert sorted(os.listdir(model_dir)) == expected
    leftovers = [folder for folder, _, _ in os.walk(model_dir) if "workertemp" in folder]
    assert leftovers == []


class PoisonWeights(tf_keras.callbacks.Callback):
    """Set the classifier's kernel to NaN before `batch` of `epoch` (both 0-based)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.target = (epoch, batch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.target:
            kernel = self.model.get_layer("predictions").kernel
            kernel.assign(tf.fill(kernel.shape, float("nan")))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir):
    model_dir = tmp_path / "model"
    config = TrainConfig(model_dir=str(model_dir), data_dir=data_dir, variant="densenet_bc22_k8", epochs=3,
                         batch_size=32, take_train=96, seed=2, learning_rate=0.1, validate=False)
    with pytest.raises(ValueError, match=r"The training loss became NaN or infinite in epoch 2, so training stopped; "
                                         r"the last good checkpoint is .*epoch-0001 and no model.h5 was written.*"
                                         r"Received: learning_rate=0.1"):
        train.run(config, extra_callbacks=[PoisonWeights(epoch=1, batch=1)])

    assert tf.train.latest_checkpoint(model_dir / "checkpoints").endswith("epoch-0001")
    assert not (model_dir / "model.h5").exists()
    history = json.loads((model_dir / "history.json").read_text())
    assert history["epoch"] == [1]
    assert np.isfinite(history["loss"][0])
    # The backup of the last good epoch stays, so that a new run resumes after epoch 1.
    backup = tf.train.latest_checkpoint(model_dir / "backup" / "chief")
    assert int(tf.train.load_checkpoint(backup).get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE")) == 0
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir / "checkpoints"))
    assert all(np.all(np.isfinite(reader.get_tensor(name))) for name, dtype in reader.get_variable_to_dtype_map().items()
               if dtype.is_floating)

    result = train.run(config)
    assert result.initial_epoch == 1
    assert result.history["epoch"] == [1, 2, 3]
    assert all(np.isfinite(result.history["loss"]))
