"""densenet-pipeline: train, QAT fine-tune, export to .tflite and evaluate, in one command.

With no flags it runs on the digits dataset that ships with the install, so it needs no network.
See `keras_densenet.pipeline` for the files it writes.

Example:
    densenet-pipeline --output_dir=runs/digits
"""

from absl import app
from absl import flags

import keras_densenet
from keras_densenet.cli.common import run_or_exit
from keras_densenet.cli.common import run_script
from keras_densenet.pipeline import PipelineConfig

# keras_densenet.export.QUANTIZATION_TYPES and the alias int8 (of qat_int8), without importing TensorFlow.
_FORMATS = ("float32", "float16", "dynamic_int8", "ptq_int8", "qat_int8", "int8")


_DEFAULTS = PipelineConfig(output_dir="unused")


FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/digits", "Folder of every output: train/, export/, report.json, report.md "
                    "and training_curves.png. A second run in the same folder resumes training.")
flags.DEFINE_enum("variant", _DEFAULTS.variant, sorted(keras_densenet.VARIANTS), "DenseNet variant.")
flags.DEFINE_string("dataset", _DEFAULTS.dataset, "TFDS image-classification dataset; digits ships with the install.")
flags.DEFINE_string("data_dir", None, "TFDS data folder; the TFDS default when unset.")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Float training epochs; the learning rate drops 10x at 50% and 75%.", lower_bound=1)
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Global batch size of training and QAT fine-tuning.", lower_bound=1)
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Initial learning rate of float training.", lower_bound=0.0)
flags.DEFINE_integer("qat_epochs", _DEFAULTS.qat_epochs, "Epochs of quantization-aware fine-tuning.", lower_bound=1)
flags.DEFINE_float("qat_learning_rate", _DEFAULTS.qat_learning_rate, "Learning rate of quantization-aware fine-tuning.", lower_bound=0.0)
flags.DEFINE_list("formats", list(_DEFAULTS.formats), f"Comma-separated .tflite formats, from {','.join(_FORMATS)}.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of initialization, shuffling and augmentation.", lower_bound=0)
flags.DEFINE_integer("take_train", None, "Use only this many training examples (quick runs).", lower_bound=1)

flags.register_validator("learning_rate", lambda value: value > 0, message="--learning_rate must be positive.")
flags.register_validator("qat_learning_rate", lambda value: value > 0, message="--qat_learning_rate must be positive.")
flags.register_validator(
    "formats",
    lambda values: bool(values) and all(value in _FORMATS for value in values),
    message=f"--formats must be a comma-separated list of {','.join(_FORMATS)}.",
)


def config_from_flags():
    """Return the `PipelineConfig` that the parsed flags describe."""
    return PipelineConfig(
        output_dir=FLAGS.output_dir,
        variant=FLAGS.variant,
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        qat_epochs=FLAGS.qat_epochs,
        qat_learning_rate=FLAGS.qat_learning_rate,
        formats=tuple(FLAGS.formats),
        seed=FLAGS.seed,
        take_train=FLAGS.take_train,
    )


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    from keras_densenet import pipeline  # Imports TensorFlow, so only after the flags are valid.
    from keras_densenet.export import job as export_job

    summary = run_or_exit(pipeline.run, config_from_flags())
    print(export_job.results_table(summary["results"]))
    print(f"Report: {FLAGS.output_dir}/report.json, report.md, training_curves.png")


def main():
    """Entry point of the densenet-pipeline console script."""
    run_script(_main, __name__)


if __name__ == "__main__":
    main()
