"""densenet-train: train a DenseNet with the recipe of Huang et al. (CVPR 2017), or resume a run in the same model_dir.

Examples:
    densenet-train --model_dir=/tmp/densenet --variant=densenet_bc22_k8 --dataset=digits --epochs=30
    densenet-train --model_dir=/tmp/c10 --recipe=cifar --variant=densenet_bc100_k12 --strategy=mirrored

A recipe sets the paper's dataset, epochs, batch size, augmentation and learning-rate boundaries;
any of these flags given on the command line overrides it. The resolved configuration is logged
and saved as config.json in model_dir.
"""

from absl import app
from absl import flags

import keras_densenet
from keras_densenet.cli.common import run_or_exit
from keras_densenet.cli.common import run_script
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
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Global batch size, summed over all replicas of all "
                     "workers; must be a multiple of the number of replicas.", lower_bound=1)
flags.DEFINE_float("learning_rate", None, "Initial learning rate; divided by 10 at each --decay_fractions. Unset: "
                   "0.1 * batch_size / lr_reference_batch_size (linear scaling from the paper's 0.1).", lower_bound=0.0)
flags.DEFINE_integer("lr_reference_batch_size", _DEFAULTS.lr_reference_batch_size, "Batch size at which an unset "
                     "--learning_rate is 0.1 (64 for CIFAR, 256 for ImageNet).", lower_bound=1)
flags.DEFINE_float("warmup_epochs", _DEFAULTS.warmup_epochs, "Epochs of linear learning-rate warmup; 0 disables it.",
                   lower_bound=0.0)
flags.DEFINE_list("decay_fractions", [str(value) for value in _DEFAULTS.decay_fractions], "Fractions of the "
                  "training steps at which the learning rate is divided by 10, e.g. 0.5,0.75 (CIFAR) or "
                  "0.3333,0.6667 (ImageNet).")
flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "Coupled L2 weight decay: each weight w adds "
                   "weight_decay / 2 * sum(w ** 2) to the loss.", lower_bound=0.0)
flags.DEFINE_float("dropout_rate", None, "Dropout rate after each convolution, in [0, 1). Unset: 0.2 without "
                   "augmentation and 0 with it.")
flags.DEFINE_enum("augment", "auto", ["auto", "true", "false"], "Augment the training data; auto uses the "
                  "dataset's default (on for cifar10 and cifar100).")
flags.DEFINE_enum("strategy", _DEFAULTS.strategy, [*config_lib.STRATEGIES, *config_lib.STRATEGY_ALIASES],
                  "tf.distribute strategy: one_device (default is an alias), mirrored (all local GPUs, else all "
                  "logical CPUs), multi_worker (cluster from TF_CONFIG, else from SLURM) or tpu (see --tpu).")
flags.DEFINE_string("tpu", _DEFAULTS.tpu, "With --strategy=tpu: local (a TPU VM), a Cloud TPU name or a "
                    "grpc://host:port address.")
flags.DEFINE_integer("cluster_timeout", _DEFAULTS.cluster_timeout, "With --strategy=multi_worker: seconds to wait "
                     "for the other workers before exiting with an error.", lower_bound=1)
flags.DEFINE_enum("mixed_precision", _DEFAULTS.mixed_precision, list(config_lib.MIXED_PRECISION_POLICIES),
                  "Mixed precision policy: mixed_float16 (GPUs, with loss scaling) or mixed_bfloat16 (CPUs, TPUs); "
                  "the classifier and model.h5 stay float32.")
flags.DEFINE_boolean("jit_compile", _DEFAULTS.jit_compile, "Compile the training step with XLA.")
flags.DEFINE_boolean("deterministic", _DEFAULTS.deterministic, "Enable TensorFlow op determinism, so that runs with "
                     "the same --seed give the same weights, also after a resume.")
flags.DEFINE_enum("recipe", "none", list(config_lib.RECIPES), "Paper recipe that sets --dataset, --epochs, "
                  "--batch_size, --augment, --decay_fractions (and --variant=densenet121 for imagenet) unless given.")
flags.DEFINE_integer("seed", None, "Random seed; unset draws one and saves it in config.json.", lower_bound=0)
flags.DEFINE_integer("take_train", None, "Use only this many training examples (for quick runs).", lower_bound=1)
flags.DEFINE_boolean("validate", _DEFAULTS.validate, "Evaluate on the test split after every epoch.")
flags.DEFINE_integer("steps_per_execution", _DEFAULTS.steps_per_execution, "Training steps per tf.function call.",
                     lower_bound=1)

flags.register_validator("learning_rate", lambda value: value is None or value > 0,
                         message="--learning_rate must be positive.")
flags.register_validator("decay_fractions", lambda values: _parse_fractions(values) is not None,
                         message="--decay_fractions must be increasing numbers in (0, 1), e.g. 0.5,0.75.")
flags.register_validator("dropout_rate", lambda value: value is None or 0 <= value < 1,
                         message="--dropout_rate must be in [0, 1).")

_AUGMENT = {"auto": None, "true": True, "false": False}


def _parse_fractions(values):
    try:
        fractions = tuple(float(value) for value in values)
    except ValueError:
        return None
    if not fractions or not all(0 < value < 1 for value in fractions) or list(fractions) != sorted(set(fractions)):
        return None
    return fractions


def config_from_flags():
    """Return the `TrainConfig` that the parsed flags describe, on top of `--recipe`.

    A flag overrides the recipe only when it is given on the command line.
    """
    values = dict(
        variant=FLAGS.variant,
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        manual_dir=FLAGS.manual_dir,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        lr_reference_batch_size=FLAGS.lr_reference_batch_size,
        warmup_epochs=FLAGS.warmup_epochs,
        decay_fractions=_parse_fractions(FLAGS.decay_fractions),
        weight_decay=FLAGS.weight_decay,
        dropout_rate=FLAGS.dropout_rate,
        augment=_AUGMENT[FLAGS.augment],
        strategy=FLAGS.strategy,
        tpu=FLAGS.tpu,
        cluster_timeout=FLAGS.cluster_timeout,
        mixed_precision=FLAGS.mixed_precision,
        jit_compile=FLAGS.jit_compile,
        deterministic=FLAGS.deterministic,
        seed=FLAGS.seed,
        take_train=FLAGS.take_train,
        validate=FLAGS.validate,
        steps_per_execution=FLAGS.steps_per_execution,
    )
    recipe = config_lib.RECIPES[FLAGS.recipe]
    overrides = {name: value for name, value in values.items() if name not in recipe or FLAGS[name].present}
    return config_lib.TrainConfig.from_recipe(FLAGS.recipe, FLAGS.model_dir, **overrides)


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    from keras_densenet.training import train  # Imports TensorFlow, so only after the flags are valid.

    result = run_or_exit(train.run, config_from_flags())
    print(f"Test metrics: {result.metrics}; model: {result.paths.model}")


def main():
    """Entry point of the densenet-train console script."""
    run_script(_main, __name__)


if __name__ == "__main__":
    main()
