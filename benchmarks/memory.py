"""Measure peak memory and time of one training step with and without memory-efficient dense layers.

Each configuration runs in its own subprocess, so one configuration's allocations cannot lower or
raise the other's numbers. A subprocess builds the model, compiles it with SGD, runs warm-up steps
(tracing the `tf.function` and creating the optimizer's slots), resets TensorFlow's allocator
statistics and then times `--steps` calls of `train_on_batch`, the step `model.fit` runs. It reports:

- the TensorFlow CPU allocator's peak bytes during the measured steps minus the bytes allocated
  before them (`tf.config.experimental.get_memory_info("CPU:0")`), that is the activations and
  temporaries of one step;
- the process's peak resident set size (`ru_maxrss`), which also counts the TensorFlow runtime,
  the traced graph and memory that malloc keeps after `free`.

Usage:
    python benchmarks/memory.py --variant=densenet_bc100_k12 --batch_size=64 --image_size=32 --steps=5
"""

import json
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
flags.DEFINE_string("variant", "densenet_bc100_k12", "DenseNet variant to train.")
flags.DEFINE_integer("batch_size", 64, "Images per training step.", lower_bound=1)
flags.DEFINE_integer("image_size", 32, "Height and width of the random input images, in pixels.", lower_bound=4)
flags.DEFINE_integer("steps", 5, "Training steps timed after the warm-up steps.", lower_bound=1)
flags.DEFINE_integer("warmup_steps", 2, "Training steps run before measuring.", lower_bound=1)
flags.DEFINE_enum("mode", "compare", ["compare", "standard", "memory_efficient"],
                  "`compare` runs both configurations in subprocesses; the others measure one in this process.")


def measure(variant, batch_size, image_size, steps, warmup_steps, memory_efficient):
    """Train `variant` on random data and return its memory and time measurements as a dict."""
    import resource

    import numpy as np
    import tensorflow as tf
    import tf_keras

    import keras_densenet

    model = keras_densenet.DenseNet(
        variant, input_shape=(image_size, image_size, 3), classes=10, memory_efficient=memory_efficient
    )
    model.compile(optimizer=tf_keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (batch_size, image_size, image_size, 3)).astype("float32")
    labels = rng.integers(0, 10, batch_size)

    for _ in range(warmup_steps):
        model.train_on_batch(images, labels)
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    tf.config.experimental.reset_memory_stats("CPU:0")
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    step_seconds = (time.perf_counter() - start) / steps
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    return {
        "memory_efficient": memory_efficient,
        "step_peak_mib": (peak - before) / 2**20,
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_seconds": step_seconds,
    }


def cpu_model():
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_in_subprocess(mode):
    command = [
        sys.executable,
        __file__,
        f"--mode={mode}",
        f"--variant={FLAGS.variant}",
        f"--batch_size={FLAGS.batch_size}",
        f"--image_size={FLAGS.image_size}",
        f"--steps={FLAGS.steps}",
        f"--warmup_steps={FLAGS.warmup_steps}",
    ]
    logging.info("Running %s", " ".join(command))
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.mode != "compare":
        result = measure(
            FLAGS.variant, FLAGS.batch_size, FLAGS.image_size, FLAGS.steps, FLAGS.warmup_steps,
            memory_efficient=FLAGS.mode == "memory_efficient",
        )
        print(json.dumps(result))
        return
    import os

    standard = run_in_subprocess("standard")
    efficient = run_in_subprocess("memory_efficient")
    summary = {
        "variant": FLAGS.variant,
        "batch_size": FLAGS.batch_size,
        "image_size": FLAGS.image_size,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "standard": standard,
        "memory_efficient": efficient,
        "step_peak_reduction": 1 - efficient["step_peak_mib"] / standard["step_peak_mib"],
        "step_time_increase": efficient["step_seconds"] / standard["step_seconds"] - 1,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
