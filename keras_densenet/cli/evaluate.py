"""densenet-evaluate: top-1 (and top-5) accuracy of a densenet-train run on its dataset's test split.

Example:
    densenet-evaluate --model_dir=/tmp/densenet
"""

import json

from absl import app
from absl import flags

from keras_densenet.cli.common import run_or_exit
from keras_densenet.cli.common import run_script

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Folder of a finished densenet-train run (config.json and model.h5).",
                    required=True)
flags.DEFINE_string("data_dir", None, "TFDS data folder; unset uses the one the run was trained with.")
flags.DEFINE_string("manual_dir", None, "Folder of manually downloaded archives; unset uses the run's.")
flags.DEFINE_integer("batch_size", None, "Evaluation batch size; unset uses the run's training batch size.",
                     lower_bound=1)
flags.DEFINE_integer("take", None, "Evaluate only the first this many test examples.", lower_bound=1)


def config_from_flags():
    """Return the `EvaluateConfig` that the parsed flags describe."""
    from keras_densenet.training import evaluate  # Imports TensorFlow, so only after the flags are valid.

    return evaluate.EvaluateConfig(
        model_dir=FLAGS.model_dir,
        data_dir=FLAGS.data_dir,
        manual_dir=FLAGS.manual_dir,
        batch_size=FLAGS.batch_size,
        take=FLAGS.take,
    )


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    from keras_densenet.training import evaluate

    metrics = run_or_exit(evaluate.run, config_from_flags())
    print(json.dumps(metrics, sort_keys=True))


def main():
    """Entry point of the densenet-evaluate console script."""
    run_script(_main, __name__)


if __name__ == "__main__":
    main()
