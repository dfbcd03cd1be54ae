"""densenet-train: train a DenseNet with the recipe of Huang et al. (CVPR 2017), or resume a run in the same model_dir.

Example:
    densenet-train --model_dir=/tmp/densenet --variant=densenet_bc22_k8 --dataset=digits --epochs=30
"""

from absl import app
from absl import flags

import keras_densenet
from keras_densenet.cli.common import run_or_exit
from keras_densenet.training import config as config_lib

_DEFAULTS = config_lib.TrainConfig(model_dir="unused")

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Folder of the run's config, history, checkpoints, logs and model.h5. "
                    "A second run in the same folder resumes.", required=True)
flags.DEFINE_enum("variant", _DEFAULTS.variant, sorted(keras_densenet.VARIANTS), "DenseNet variant to train.")
flags.DEFINE_string("dataset", _DEFAULTS.dataset, "TFDS image-classification dataset, e.g. digits (built in, "
                    "needs no network), cifar10, cifar100, svhn_cropped or imagenet2012.")
flags.DEFINE_string("data_dir", None, "TFDS data folder; the TFDS default when unset.")
flags.DEFINE_string("manual_dir", None, "Folder of manually downloaded archives (imagenet2012).")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Total number of training epochs, counting earlier runs in "
                     "model_dir.", lower_bound=1)
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Global batch size; must be a multiple of the number of "
                     "replicas.", lower_bound=1)
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Initial learning rate; divided by 10 at 50% and "
                   "again at 75% of the training steps.", lower_bound=0.0)
flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "Coupled L2 weight decay: each weight w adds "
                   "weight_decay / 2 * sum(w ** 2) to the loss.", lower_bound=0.0)
flags.DEFINE_float("dropout_rate", None, "Dropout rate after each convolution, in [0, 1). Unset: 0.2 without "
                   "augmentation and 0 with it.")
flags.DEFINE_enum("augment", "auto", ["auto", "true", "false"], "Augment the training data; auto uses the "
                  "dataset's default (on for cifar10 and cifar100).")
flags.DEFINE_enum("strategy", _DEFAULTS.strategy, list(config_lib.STRATEGIES), "tf.distribute strategy: default "
                  "(one device), mirrored (all local GPUs, else all logical CPUs) or multi_worker (reads TF_CONFIG).")
flags.DEFINE_integer("seed", None, "Random seed; unset draws one and saves it in config.json.", lower_bound=0)
flags.DEFINE_integer("take_train", None, "Use only this many training examples (for quick runs).", lower_bound=1)
flags.DEFINE_boolean("validate", _DEFAULTS.validate, "Evaluate on the test split after every epoch.")
flags.DEFINE_integer("steps_per_execution", _DEFAULTS.steps_per_execution, "Training steps per tf.function call.",
                     lower_bound=1)

flags.register_validator("learning_rate", lambda value: value > 0,
                         message="--learning_rate must be positive.")
flags.register_validator("dropout_rate", lambda value: value is None or 0 <= value < 1,
                         message="--dropout_rate must be in [0, 1).")

_AUGMENT = {"auto": None, "true": True, "false": False}


def config_from_flags():
    """Return the `TrainConfig` that the parsed flags describe."""
    return config_lib.TrainConfig(
        model_dir=FLAGS.model_dir,
        variant=FLAGS.variant,
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        manual_dir=FLAGS.manual_dir,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        weight_decay=FLAGS.weight_decay,
        dropout_rate=FLAGS.dropout_rate,
        augment=_AUGMENT[FLAGS.augment],
        strategy=FLAGS.strategy,
        seed=FLAGS.seed,
        take_train=FLAGS.take_train,
        validate=FLAGS.validate,
        steps_per_execution=FLAGS.steps_per_execution,
    )


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    from keras_densenet.training import train  # Imports TensorFlow, so only after the flags are valid.

    result = run_or_exit(train.run, config_from_flags())
    print(f"Test metrics: {result.metrics}; model: {result.paths.model}")


def main():
    """Entry point of the densenet-train console script."""
    app.run(_main)


if __name__ == "__main__":
    main()
