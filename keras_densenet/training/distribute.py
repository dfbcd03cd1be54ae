"""Creation of the `tf.distribute` strategies that the train script offers."""

import json
import os

import tensorflow as tf

from keras_densenet.training.config import STRATEGIES


def create_strategy(name):
    """Create the `tf.distribute.Strategy` named `name`.

    - `"default"`: `tf.distribute.get_strategy()`, the no-op strategy on one device.
    - `"mirrored"`: `tf.distribute.MirroredStrategy` over every local GPU, or over every logical CPU
      device when there is no GPU (by default `MirroredStrategy` would use only the first CPU).
    - `"multi_worker"`: `tf.distribute.MultiWorkerMirroredStrategy`, which reads the cluster from the
      `TF_CONFIG` environment variable. It must be created before TensorFlow runs any operation.

    Raises:
        ValueError: on an unknown `name`, or for `"multi_worker"` when `TF_CONFIG` is missing or invalid.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")


def check_tf_config(text):
    """Raise ValueError unless `text` is a `TF_CONFIG` value that describes this worker in a cluster.

    A valid value is a JSON object with `cluster` (a map from task type to a list of "host:port"
    addresses, with at least one `worker` or `chief`) and `task` (`type` and `index` of this process
    in `cluster`).
    """
    example = '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
    fix = f"Set the TF_CONFIG environment variable on every worker, e.g. TF_CONFIG='{example}'"
    if not text:
        raise ValueError(f"`strategy=multi_worker` needs the TF_CONFIG environment variable. {fix}. Received: TF_CONFIG={text!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"TF_CONFIG is not valid JSON. {fix}. Received: TF_CONFIG={text!r}") from None
    cluster = value.get("cluster") if isinstance(value, dict) else None
    task = value.get("task") if isinstance(value, dict) else None
    if not isinstance(cluster, dict) or not (cluster.get("worker") or cluster.get("chief")):
        raise ValueError(f"TF_CONFIG needs a `cluster` with a `worker` or `chief` address list. {fix}. Received: TF_CONFIG={text!r}")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(f"TF_CONFIG needs a `task` whose `type` is a key of `cluster`. {fix}. Received: TF_CONFIG={text!r}")
    addresses = cluster[task["type"]]
    index = task.get("index")
    if not isinstance(addresses, list) or isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(addresses):
        raise ValueError(
            f"TF_CONFIG `task.index` must be an index into `cluster.{task['type']}`. {fix}. Received: TF_CONFIG={text!r}"
        )


def is_chief(strategy):
    """Return whether this process writes the run's files: always, except on non-chief workers."""
    return bool(strategy.extended.should_checkpoint)

