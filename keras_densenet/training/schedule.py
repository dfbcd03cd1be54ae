"""The step learning-rate schedule of Huang et al., "Densely Connected Convolutional Networks" (CVPR 2017)."""

import tensorflow as tf
import tf_keras


@tf_keras.utils.register_keras_serializable(package="keras_densenet")
class StepDecaySchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate divided by 10 at 50% and at 75% of the training steps.

    This is the schedule that DenseNet was trained with. With `boundary_1 = total_steps // 2` and `boundary_2 = 3 * total_steps // 4`, step
    `s` (the optimizer's 0-based update count) gets `initial_learning_rate` for `s < boundary_1`,
    a tenth of it for `boundary_1 <= s < boundary_2`, and a hundredth from `boundary_2` on.

    Args:
        initial_learning_rate: Learning rate of the first half of training; positive.
        total_steps: Number of optimizer steps of the whole training; positive.

    Raises:
        ValueError: if an argument is not positive.
    """

    def __init__(self, initial_learning_rate, total_steps, name=None):
        super().__init__()
        if not initial_learning_rate > 0:
            raise ValueError(
                "`initial_learning_rate` must be positive. "
                f"Received: initial_learning_rate={initial_learning_rate!r}"
            )
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"`total_steps` must be a positive integer. Received: total_steps={total_steps!r}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.total_steps = total_steps
        self.name = name
        self.boundaries = (total_steps // 2, 3 * total_steps // 4)
        self.values = (self.initial_learning_rate, self.initial_learning_rate / 10, self.initial_learning_rate / 100)

    def __call__(self, step):
        with tf.name_scope(self.name or "StepDecaySchedule"):
            step = tf.cast(step, tf.int64)
            first, second = self.boundaries
            values = [tf.constant(value, tf.float32) for value in self.values]
            return tf.where(step < first, values[0], tf.where(step < second, values[1], values[2]))

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "total_steps": self.total_steps,
            "name": self.name,
        }
