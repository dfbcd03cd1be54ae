"""Tests of strategy creation, MirroredStrategy training on two virtual CPUs, and two-worker training.

Logical CPU devices can be configured only before TensorFlow initializes, and a
MultiWorkerMirroredStrategy must be created before any operation runs, so the training runs below
happen in child processes.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from keras_densenet import data
from keras_densenet.training import distribute

TIMEOUT_SECONDS = 240

TWO_CPUS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""

MIRRORED_RUN = TWO_CPUS + """
import json, sys
import tf_keras
from keras_densenet import data
from keras_densenet.training import distribute, train
from keras_densenet.training.config import TrainConfig

model_dir, data_dir = sys.argv[1], sys.argv[2]
config = TrainConfig(model_dir=model_dir, data_dir=data_dir, variant="densenet_bc22_k8", epochs=1,
                     batch_size=32, take_train=256, seed=0, strategy="mirrored", validate=True)
strategy = distribute.create_strategy("mirrored")
info = data.get_dataset_info("digits", data_dir=data_dir)
dataset = train.make_train_dataset(config.resolve(info, strategy.num_replicas_in_sync), info, strategy)
images, labels = next(iter(dataset))
replica_batches = [int(t.shape[0]) for t in strategy.experimental_local_results(images)]

class CountBatches(tf_keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0
    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

counter = CountBatches()
result = train.run(config, extra_callbacks=[counter])
try:
    train.run(TrainConfig(model_dir=model_dir + "-odd", data_dir=data_dir, batch_size=3, strategy="mirrored"))
    odd_error = None
except ValueError as error:
    odd_error = str(error)
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "replica_batches": replica_batches,
    "batches": counter.batches,
    "steps_per_epoch": result.steps_per_epoch,
    "loss": result.history["loss"],
    "top1": result.metrics["top1"],
    "odd_error": odd_error,
}))
"""

WORKER_RUN = """
import hashlib, json, sys
import numpy as np
from keras_densenet import data
from keras_densenet.training import train
from keras_densenet.training.config import TrainConfig

config = TrainConfig(model_dir=sys.argv[1], data_dir=sys.argv[2], variant="densenet_bc22_k8", epochs=1,
                     batch_size=32, take_train=128, seed=0, strategy="multi_worker", validate=False)
result = train.run(config)
digest = hashlib.sha256()
for weight in result.model.get_weights():
    digest.update(np.ascontiguousarray(weight).tobytes())

# The examples of this worker in the first step of epoch 0.
strategy = result.model.distribute_strategy
info = data.get_dataset_info("digits", data_dir=sys.argv[2])
dataset = train.make_train_dataset(result.config, info, strategy, 0, result.steps_per_epoch)
images, labels = next(iter(dataset))
local_images = strategy.experimental_local_results(images)
rows = [hashlib.sha256(row.tobytes()).hexdigest() for batch in local_images for row in batch.numpy()]
print(json.dumps({"weights_sha256": digest.hexdigest(), "history": result.history,
                  "replicas": strategy.num_replicas_in_sync,
                  "replica_batches": [int(batch.shape[0]) for batch in local_images],
                  "step_examples": rows}))
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


def last_json_line(output):
    lines = [line for line in output.splitlines() if line.startswith("{")]
    assert lines, output[-3000:]
    return json.loads(lines[-1])


@pytest.mark.parametrize("name", ["one_device", "default"])
def test_create_one_device_strategy(name):
    assert distribute.create_strategy(name) is tf.distribute.get_strategy()


def test_create_mirrored_strategy_uses_local_devices():
    strategy = distribute.create_strategy("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    expected = len(tf.config.list_logical_devices("GPU")) or len(tf.config.list_logical_devices("CPU"))
    assert strategy.num_replicas_in_sync == expected


def test_create_strategy_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"`strategy` must be one of \('one_device', 'mirrored', 'multi_worker', 'tpu'\).*Received: strategy='ps'"):
        distribute.create_strategy("ps")


def test_tpu_strategy_without_tpu_fails_fast():
    with pytest.raises(ValueError, match=r"`strategy=tpu` found no TPU attached to this host.*Received: tpu='local'"):
        distribute.create_strategy("tpu")


def test_tpu_strategy_rejects_unreachable_address():
    address = f"grpc://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match=rf"The TPU address {address} does not accept connections.*Received: tpu="):
        distribute.create_strategy("tpu", tpu=address)


SLURM_TWO_NODES = {
    "SLURM_PROCID": "1",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_NODELIST": "node[07-08]",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
}


def test_resolve_cluster_from_slurm(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for name, value in SLURM_TWO_NODES.items():
        monkeypatch.setenv(name, value)
    resolver = distribute.resolve_cluster()
    assert isinstance(resolver, tf.distribute.cluster_resolver.SlurmClusterResolver)
    assert resolver.cluster_spec().as_dict() == {"worker": ["node07:8888", "node08:8888"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)


def test_resolve_cluster_prefers_tf_config(monkeypatch):
    for name, value in SLURM_TWO_NODES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}')
    resolver = distribute.resolve_cluster()
    assert resolver.cluster_spec().as_dict() == {"worker": ["a:1", "b:2"]}


def test_resolve_cluster_rejects_incomplete_slurm(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    for name in ("SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=r"The SLURM job does not describe a cluster.*Start the workers with srun.*Received: \{'SLURM_PROCID': '0'\}"):
        distribute.resolve_cluster()


def test_multi_worker_requires_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with pytest.raises(ValueError, match=r"needs the TF_CONFIG environment variable.*Received: TF_CONFIG=None"):
        distribute.create_strategy("multi_worker")


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", r"TF_CONFIG is not valid JSON"),
        ('["worker"]', r"needs a `cluster`"),
        ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', r"needs a `cluster`"),
        ('{"cluster": {"worker": ["a:1"]}}', r"needs a `task`"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', r"needs a `task`"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', r"`task.index` must be an index"),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', r"`cluster.worker` must be a list of \"host:port\""),
        ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}', r"`cluster.worker` must be a list"),
        ('{"cluster": {"worker": ["a:99999"]}, "task": {"type": "worker", "index": 0}}', r"`cluster.worker` must be a list"),
    ],
)
def test_check_tf_config_rejects_malformed(text, message):
    with pytest.raises(ValueError, match=message + r".*Received: TF_CONFIG="):
        distribute.check_tf_config(text)


def test_check_tf_config_accepts_cluster():
    distribute.check_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')


@pytest.mark.slow
def test_mirrored_training_on_two_cpus(tmp_path, data_dir):
    completed = subprocess.run(
        [sys.executable, "-c", MIRRORED_RUN, str(tmp_path / "model"), data_dir],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = last_json_line(completed.stdout)
    assert result["replicas"] == 2
    assert result["replica_batches"] == [16, 16]
    assert result["steps_per_epoch"] == 256 // 32
    assert result["batches"] == 256 // 32
    assert all(loss == loss and loss < 10 for loss in result["loss"])  # finite and not diverged
    assert 0.0 <= result["top1"] <= 1.0
    assert "`batch_size` must be a multiple of the number of replicas (2)" in result["odd_error"]
    assert "Received: batch_size=3" in result["odd_error"]
    assert not (tmp_path / "model-odd").exists()


@pytest.mark.slow
def test_two_workers_end_with_identical_weights(tmp_path, data_dir):
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    model_dir = str(tmp_path / "model")
    processes = []
    try:
        for index in range(2):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", WORKER_RUN, model_dir, data_dir],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        outputs = [process.communicate(timeout=TIMEOUT_SECONDS) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    chief, other = (last_json_line(stdout) for stdout, _ in outputs)
    assert chief["replicas"] == 2
    assert chief["weights_sha256"] == other["weights_sha256"]
    assert chief["history"]["epoch"] == [1]
    assert chief["history"]["loss"] == pytest.approx(other["history"]["loss"])
    # Each worker reads its own shard: 16 examples per worker, none shared.
    assert chief["replica_batches"] == [16]
    assert other["replica_batches"] == [16]
    assert len(set(chief["step_examples"])) == 16
    assert len(set(other["step_examples"])) == 16
    assert set(chief["step_examples"]).isdisjoint(other["step_examples"])
    expected = ["backup", "checkpoints", "config.json", "evaluation.json", "history.json", "logs", "model.h5"]
    assert sorted(os.listdir(model_dir)) == expected
    # The second worker writes checkpoints and logs to temporary folders that Keras removes.
    leftovers = [folder for folder, _, _ in os.walk(model_dir) if "workertemp" in folder]
    assert leftovers == []


UNREACHABLE_RUN = """
from keras_densenet.training import distribute
distribute.create_strategy("multi_worker", cluster_timeout=5)
print("connected")
"""


@pytest.mark.parametrize("index", [0, 1])
def test_unreachable_worker_times_out(index):
    # No process listens on the other worker's port, so this worker waits for it until the time-out.
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
    completed = subprocess.run([sys.executable, "-c", UNREACHABLE_RUN], capture_output=True, text=True, env=env, timeout=90)
    assert completed.returncode != 0
    assert "connected" not in completed.stdout
    errors = [line for line in completed.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, completed.stderr[-2000:]
    assert f"other workers {workers[1 - index]} timed out after 5 s" in errors[0]
    assert errors[0].endswith("Received: cluster_timeout=5")
