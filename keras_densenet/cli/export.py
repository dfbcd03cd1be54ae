"""densenet-export: QAT fine-tuning of a densenet-train run and conversion to .tflite files.

See `keras_densenet.export.job` for the files it writes.

Example:
    densenet-export --model_dir=/tmp/densenet --formats=float32,int8 --qat_epochs=2
"""

import json

from absl import app
from absl import flags

from keras_densenet.cli.common import run_or_exit
from keras_densenet.export.job import DEFAULT_FORMATS
from keras_densenet.export.job import ExportConfig
from keras_densenet.export.job import run

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Folder of a finished densenet-train run (model.h5 and config.json).",
                    required=True)
flags.DEFINE_string("output_dir", None, "Folder of the exported files; unset uses {model_dir}/export.")
flags.DEFINE_list("formats", list(DEFAULT_FORMATS), "Comma-separated conversion types to export, from "
                  f"{','.join(DEFAULT_FORMATS)}.")
flags.register_validator(
    "formats",
    lambda values: bool(values) and all(value in DEFAULT_FORMATS for value in values),
    message=f"--formats must be a comma-separated list of {','.join(DEFAULT_FORMATS)}",
)
flags.DEFINE_integer("qat_epochs", 1, "Epochs of QAT fine-tuning on the training split; at least 1 for int8.",
                     lower_bound=0)
flags.DEFINE_float("learning_rate", 1e-3, "Learning rate of QAT fine-tuning (SGD, Nesterov momentum 0.9).",
                   lower_bound=0.0)
flags.DEFINE_integer("batch_size", 64, "Batch size of QAT fine-tuning and evaluation.", lower_bound=1)
flags.DEFINE_string("data_dir", None, "TFDS data folder; unset uses the one the run was trained with.")
flags.DEFINE_string("manual_dir", None, "Folder of manually downloaded archives; unset uses the run's.")
flags.DEFINE_integer("take_train", None, "Fine-tune on only this many training examples.", lower_bound=1)
flags.DEFINE_integer("take_test", None, "Evaluate on only this many test examples.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the fine-tuning shuffle order and augmentation.", lower_bound=0)


def config_from_flags():
    """Return the `ExportConfig` that the parsed flags describe."""
    return ExportConfig(
        model_dir=FLAGS.model_dir,
        output_dir=FLAGS.output_dir,
        formats=tuple(FLAGS.formats),
        qat_epochs=FLAGS.qat_epochs,
        learning_rate=FLAGS.learning_rate,
        batch_size=FLAGS.batch_size,
        data_dir=FLAGS.data_dir,
        manual_dir=FLAGS.manual_dir,
        take_train=FLAGS.take_train,
        take_test=FLAGS.take_test,
        seed=FLAGS.seed,
    )


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    results = run_or_exit(run, config_from_flags())
    print(json.dumps(results, sort_keys=True))


def main():
    """Entry point of the densenet-export console script."""
    app.run(_main)


if __name__ == "__main__":
    main()
