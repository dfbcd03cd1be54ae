"""Creation of the `tf.distribute` strategies that the train script offers."""

import json
import os
import socket
import subprocess
import sys

import tensorflow as tf
from absl import logging

from keras_densenet.training.config import STRATEGIES
from keras_densenet.training.config import STRATEGY_ALIASES

SLURM_PORT = 8888  # Port of every worker's server under SLURM (the `SlurmClusterResolver` default).
_CPU_NODE_TASKS = 1024  # Upper bound on SLURM tasks per CPU-only node.
_TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'


def create_strategy(name, tpu="local", cluster_timeout=600):
    """Create the `tf.distribute.Strategy` named `name`.

    - `"one_device"` (alias `"default"`): `tf.distribute.get_strategy()`, the no-op strategy, which
      runs on the first GPU when there is one and on the CPU otherwise.
    - `"mirrored"`: `tf.distribute.MirroredStrategy` over every local GPU, or over every logical CPU
      device when there is no GPU (by default `MirroredStrategy` would use only the first CPU).
    - `"multi_worker"`: `tf.distribute.MultiWorkerMirroredStrategy` over the cluster that
      `resolve_cluster` finds (TF_CONFIG, else SLURM). It must be created before TensorFlow runs
      any operation.
    - `"tpu"`: `tf.distribute.TPUStrategy` on the TPU that `tpu` names.

    With `"multi_worker"`, a watchdog process kills this process with SIGKILL when the workers have
    not all connected within `cluster_timeout` seconds, after writing one `Error: ...` line that
    names the other workers' addresses to stderr. TensorFlow 2.21 would otherwise wait for them
    forever, and it catches SIGTERM.

    Args:
        name: One of `STRATEGIES`, or "default".
        tpu: "local", a Cloud TPU name or a "grpc://host:port" address; used only by "tpu".
        cluster_timeout: Seconds to wait for the other workers; used only by "multi_worker".

    Raises:
        ValueError: on an unknown `name`; for `"multi_worker"` when neither a valid TF_CONFIG nor
            a SLURM job describes the cluster, or another worker rejects the connection; for `"tpu"`
            when no TPU is found.
    """
    name = STRATEGY_ALIASES.get(name, name)
    if name == "one_device":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "multi_worker":
        return create_multi_worker_strategy(resolve_cluster(), cluster_timeout)
    if name == "tpu":
        return create_tpu_strategy(tpu)
    raise ValueError(f"`strategy` must be one of {STRATEGIES} (or 'default'). Received: strategy={name!r}")


def resolve_cluster():
    """Return the cluster resolver of this multi-worker job: from TF_CONFIG, else from SLURM.

    Under SLURM (SLURM_PROCID is set and TF_CONFIG is not), every task is a worker whose server
    listens on port `SLURM_PORT` of its node. Run one task per node: each task uses all GPUs of its
    node.

    Raises:
        ValueError: when TF_CONFIG is malformed, or neither TF_CONFIG nor the SLURM variables are set,
            or the SLURM variables are incomplete.
    """
    text = os.environ.get("TF_CONFIG")
    if text or "SLURM_PROCID" not in os.environ:
        check_tf_config(text)
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    # auto_set_gpu=False: TensorFlow has already listed the GPUs, so CUDA_VISIBLE_DEVICES would come too
    # late. The resolver's GPU bookkeeping is then unused, but it fails on a count of 0, so CPU-only
    # nodes get a placeholder of one GPU per task.
    gpu_counts = {"gpus_per_node": num_gpus} if num_gpus else {"gpus_per_node": _CPU_NODE_TASKS, "gpus_per_task": 1}
    try:
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=SLURM_PORT, auto_set_gpu=False, **gpu_counts
        )
        resolver.cluster_spec()
    except (RuntimeError, ValueError, KeyError) as error:
        variables = {key: value for key, value in os.environ.items() if key.startswith("SLURM_STEP") or key == "SLURM_PROCID"}
        raise ValueError(
            f"The SLURM job does not describe a cluster ({str(error).splitlines()[0]}). Start the workers with srun, "
            f"which sets SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_STEP_NODELIST and SLURM_STEP_TASKS_PER_NODE, "
            f"or set TF_CONFIG. Received: {variables}"
        ) from None
    return resolver


def check_tf_config(text):
    """Raise ValueError unless `text` is a `TF_CONFIG` value that describes this worker in a cluster.

    A valid value is a JSON object with `cluster` (a map from task type to a list of "host:port"
    addresses, with at least one `worker` or `chief`) and `task` (`type` and `index` of this process
    in `cluster`).
    """
    fix = f"Set the TF_CONFIG environment variable on every worker, e.g. TF_CONFIG='{_TF_CONFIG_EXAMPLE}'"
    if not text:
        raise ValueError(
            f"`strategy=multi_worker` needs the TF_CONFIG environment variable, or a SLURM job (srun sets "
            f"SLURM_PROCID). {fix}. Received: TF_CONFIG={text!r}"
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"TF_CONFIG is not valid JSON. {fix}. Received: TF_CONFIG={text!r}") from None
    cluster = value.get("cluster") if isinstance(value, dict) else None
    task = value.get("task") if isinstance(value, dict) else None
    if not isinstance(cluster, dict) or not (cluster.get("worker") or cluster.get("chief")):
        raise ValueError(f"TF_CONFIG needs a `cluster` with a `worker` or `chief` address list. {fix}. Received: TF_CONFIG={text!r}")
    for task_type, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(_is_host_port(address) for address in addresses):
            raise ValueError(
                f"TF_CONFIG `cluster.{task_type}` must be a list of \"host:port\" addresses. {fix}. Received: TF_CONFIG={text!r}"
            )
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(f"TF_CONFIG needs a `task` whose `type` is a key of `cluster`. {fix}. Received: TF_CONFIG={text!r}")
    addresses = cluster[task["type"]]
    index = task.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(addresses):
        raise ValueError(
            f"TF_CONFIG `task.index` must be an index into `cluster.{task['type']}`. {fix}. Received: TF_CONFIG={text!r}"
        )


def _is_host_port(address):
    if not isinstance(address, str) or ":" not in address:
        return False
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def create_multi_worker_strategy(resolver, cluster_timeout):
    """Create a `MultiWorkerMirroredStrategy`, ending the process if the cluster does not connect in time.

    See `create_strategy` for the watchdog. A worker that is refused by the coordination service
    leader gets a `ValueError` instead.

    Raises:
        ValueError: when TensorFlow reports that the cluster could not be reached.
    """
    cluster = resolver.cluster_spec().as_dict()
    own = f"{resolver.task_type}:{resolver.task_id}"
    peers = [
        address
        for task_type, addresses in sorted(cluster.items())
        for index, address in enumerate(addresses)
        if f"{task_type}:{index}" != own
    ]
    logging.info("Connecting to the cluster %s as %s; waiting at most %d s.", json.dumps(cluster), own, cluster_timeout)
    message = (
        f"Error: Connecting to the other workers {', '.join(peers)} timed out after {cluster_timeout} s. Start every "
        f"worker with the same cluster, check that these addresses are reachable from this host, or raise "
        f"--cluster_timeout. Received: cluster_timeout={cluster_timeout}"
    )
    # The watchdog is a separate process because the blocked TensorFlow call holds the GIL, so no
    # Python thread or signal handler of this process would run.
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(cluster_timeout), message],
        stdin=subprocess.PIPE,
    )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as error:
        raise ValueError(
            f"Connecting to the other workers {', '.join(peers)} failed ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0]}). Start every worker of the cluster, check that the addresses "
            f"are reachable from this host, or raise `cluster_timeout`. Received: cluster={json.dumps(cluster)}"
        ) from None
    finally:
        watchdog.stdin.close()  # End of input tells the watchdog to exit without killing this process.
        watchdog.wait()


# Arguments: the process id to kill, the time-out in seconds and the error message. The watchdog
# exits quietly when its standard input closes first.
_WATCHDOG = """
import os, select, signal, sys
pid, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], timeout)
if not ready:
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    os.kill(pid, signal.SIGKILL)
"""


def _accepts_connection(address):
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def create_tpu_strategy(tpu):
    """Connect to the TPU that `tpu` names, initialize it and return a `tf.distribute.TPUStrategy`.

    Args:
        tpu: "local" for a TPU attached to this host, a "grpc://host:port" address or a Cloud TPU name.

    Raises:
        ValueError: when `tpu` is "local" and this host has no TPU, a "grpc://" address does not
            accept connections, or the TPU cannot be resolved or initialized.
    """
    if tpu == "local" and not tf.config.list_physical_devices("TPU"):
        raise ValueError(
            "`strategy=tpu` found no TPU attached to this host. Run on a TPU VM, pass the Cloud TPU name or "
            "grpc://host:port address with --tpu, or use --strategy=one_device, mirrored or multi_worker. "
            f"Received: tpu={tpu!r}"
        )
    if tpu.startswith("grpc://") and not _accepts_connection(tpu[len("grpc://"):]):
        raise ValueError(
            f"The TPU address {tpu} does not accept connections. Check the address and that the TPU is running. "
            f"Received: tpu={tpu!r}"
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ValueError(
            f"Connecting to the TPU {tpu!r} failed ({str(error).strip().splitlines()[0]}). Check --tpu. Received: tpu={tpu!r}"
        ) from None
    # NOTE: never run here: no machine that develops this package has a TPU.
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """Return whether this process writes the run's files: always, except on non-chief workers."""
    return bool(strategy.extended.should_checkpoint)
