"""The step learning-rate schedule of Huang et al., "Densely Connected Convolutional Networks" (CVPR 2017)."""

import math

import tensorflow as tf
import tf_keras

DEFAULT_BOUNDARY_FRACTIONS = (0.5, 0.75)


@tf_keras.utils.register_keras_serializable(package="keras_densenet")
class StepDecaySchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate divided by 10 at fixed fractions of the training steps, after an optional linear warmup.

    This is the schedule that DenseNet was trained with: on CIFAR the rate is divided by 10 at 50% and
    75% of the steps, on ImageNet at 1/3 and 2/3. Boundary `i` is
    `floor(boundary_fractions[i] * total_steps)`. Step `s` (the optimizer's 0-based update count)
    gets `initial_learning_rate * 0.1 ** k`, where `k` is the number of boundaries `<= s`.
    During the first `warmup_steps` steps that value is multiplied by `(s + 1) / warmup_steps`.

    Args:
        initial_learning_rate: Learning rate before the first boundary; positive.
        total_steps: Number of optimizer steps of the whole training; positive.
        boundary_fractions: Increasing fractions in (0, 1) of `total_steps`.
        warmup_steps: Number of warmup steps; 0 disables the warmup.

    Raises:
        ValueError: if an argument is out of range.
    """

    def __init__(self, initial_learning_rate, total_steps, boundary_fractions=DEFAULT_BOUNDARY_FRACTIONS,
                 warmup_steps=0, name=None):
        super().__init__()
        if not initial_learning_rate > 0:
            raise ValueError(
                "`initial_learning_rate` must be positive. "
                f"Received: initial_learning_rate={initial_learning_rate!r}"
            )
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"`total_steps` must be a positive integer. Received: total_steps={total_steps!r}")
        fractions = tuple(float(value) for value in boundary_fractions)
        if not all(0 < value < 1 for value in fractions) or list(fractions) != sorted(set(fractions)):
            raise ValueError(
                "`boundary_fractions` must be increasing fractions in (0, 1). "
                f"Received: boundary_fractions={boundary_fractions!r}"
            )
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be a non-negative integer. Received: warmup_steps={warmup_steps!r}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.total_steps = total_steps
        self.boundary_fractions = fractions
        self.warmup_steps = warmup_steps
        self.name = name
        # The small offset keeps e.g. 2/3 * 90 at 60, not at 59.99999999999999.
        self.boundaries = tuple(math.floor(value * total_steps + 1e-9) for value in fractions)
        self.values = tuple(self.initial_learning_rate * 0.1**i for i in range(len(fractions) + 1))

    def __call__(self, step):
        with tf.name_scope(self.name or "StepDecaySchedule"):
            step = tf.cast(step, tf.int64)
            learning_rate = tf.constant(self.values[0], tf.float32)
            for boundary, value in zip(self.boundaries, self.values[1:]):
                learning_rate = tf.where(step >= boundary, tf.constant(value, tf.float32), learning_rate)
            if self.warmup_steps:
                ramp = tf.cast(step + 1, tf.float32) / float(self.warmup_steps)
                learning_rate = learning_rate * tf.minimum(ramp, 1.0)
            return learning_rate

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "total_steps": self.total_steps,
            "boundary_fractions": list(self.boundary_fractions),
            "warmup_steps": self.warmup_steps,
            "name": self.name,
        }
