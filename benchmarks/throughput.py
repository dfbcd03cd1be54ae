"""Training throughput of several models measured side by side in one process.

Every model is built, compiled with SGD (momentum 0.9) and sparse categorical cross-entropy, and
warmed up (tracing the train function, creating optimizer slots, compiling XLA clusters) before any
timing. Then the timed rounds alternate between the models, so load from other processes on the
machine spreads over all of them instead of hitting one. A step is one `train_on_batch` call, which
runs the train function that `model.fit` runs per batch. It returns the loss as a NumPy value, so
each timed call waits for the step to finish.
"""

import dataclasses
import statistics
import time
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One model in a throughput comparison.

    Attributes:
        label: Name in the tables and the JSON file.
        build: Function of no arguments that returns an uncompiled Keras model.
        keras: The Keras module of the model (`tf_keras` or Keras 3 `keras`), whose optimizer it uses.
        jit_compile: Whether the train function is compiled with XLA.
    """

    label: str
    build: Callable
    keras: object
    jit_compile: bool = False


def measure_throughput(candidates, batch_size, image_size, classes, warmup_steps, steps, rounds, seed=0):
    """Measure the training throughput of each candidate, interleaved.

    Args:
        candidates: Sequence of `Candidate`s with distinct labels.
        batch_size: Images per train step.
        image_size: Height and width of the random input images, in pixels.
        classes: Number of classes of the random labels.
        warmup_steps: Untimed steps per model before the first round.
        steps: Consecutive timed steps per model in each round.
        rounds: Number of rounds; each round times every model once, in order.
        seed: Seed of the random images and labels.

    Returns:
        A dict from label to a dict with `"images_per_second"` (batch size over the median time per
        step across rounds), `"step_seconds"` (the time per step of each round), `"first_step_seconds"`
        (the first warm-up step, which includes tracing and compilation), `"parameters"` and
        `"jit_compile"`.

    Raises:
        ValueError: if two candidates share a label.
    """
    labels = [candidate.label for candidate in candidates]
    if len(set(labels)) != len(labels):
        raise ValueError(f"`candidates` must have distinct labels. Received: labels={labels}")

    rng = np.random.default_rng(seed)
    images = tf.constant(rng.normal(0.0, 1.0, (batch_size, image_size, image_size, 3)).astype("float32"))
    targets = tf.constant(rng.integers(0, classes, batch_size))

    models = {}
    results = {}
    for candidate in candidates:
        logging.info("Building and warming up %s", candidate.label)
        model = candidate.build()
        model.compile(
            optimizer=candidate.keras.optimizers.SGD(0.01, momentum=0.9),
            loss="sparse_categorical_crossentropy",
            jit_compile=candidate.jit_compile,
        )
        start = time.perf_counter()
        model.train_on_batch(images, targets)
        first_step_seconds = time.perf_counter() - start
        for _ in range(warmup_steps - 1):
            model.train_on_batch(images, targets)
        models[candidate.label] = model
        results[candidate.label] = {
            "parameters": int(model.count_params()),
            "jit_compile": candidate.jit_compile,
            "first_step_seconds": first_step_seconds,
            "step_seconds": [],
        }

    for round_index in range(rounds):
        for label, model in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(images, targets)
            seconds = (time.perf_counter() - start) / steps
            results[label]["step_seconds"].append(seconds)
            logging.info("Round %d/%d, %s: %.3f s per step", round_index + 1, rounds, label, seconds)

    for label, result in results.items():
        result["images_per_second"] = batch_size / statistics.median(result["step_seconds"])
    return results


def ratio(results, numerator, denominator):
    """Return the throughput of `numerator` divided by that of `denominator`, both labels in `results`."""
    return results[numerator]["images_per_second"] / results[denominator]["images_per_second"]
