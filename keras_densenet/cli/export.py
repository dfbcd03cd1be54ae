"""densenet-export: QAT fine-tuning of a densenet-train run, conversion to every .tflite format, evaluation.

See `keras_densenet.export.job` for the files it writes. It prints the compatibility report of
every file, then the results table, then the results as one line of JSON.

Example:
    densenet-export --model_dir=/tmp/densenet --formats=float32,ptq_int8,qat_int8 --qat_epochs=2
    densenet-export --model_dir=/tmp/densenet --formats=qat_int8 --target=edgetpu --input_type=uint8 \\
        --normalization=baked
"""

import json

from absl import app
from absl import flags

from keras_densenet.cli.common import run_or_exit
from keras_densenet.cli.common import run_script
from keras_densenet.export.job import DEFAULT_FORMATS
from keras_densenet.export.job import DEFAULT_PER_CHANNEL_FORMATS
from keras_densenet.export.job import NORMALIZATION_MODES
from keras_densenet.export.job import ExportConfig
from keras_densenet.export.job import run

# keras_densenet.export.convert's IO_TYPES, TARGETS and FORMAT_ALIASES, without importing TensorFlow.
_IO_TYPES = ("int8", "uint8", "float32")
_TARGETS = ("cpu", "edgetpu")
_ACCEPTED_FORMATS = DEFAULT_FORMATS + ("int8",)
_INTEGER_FORMATS = ("ptq_int8", "qat_int8", "int8")

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Folder of a finished densenet-train run (model.h5 and config.json).",
                    required=True)
flags.DEFINE_string("output_dir", None, "Folder of the exported files; unset uses {model_dir}/export.")
flags.DEFINE_list("formats", list(DEFAULT_FORMATS), "Comma-separated formats to export, from "
                  f"{','.join(_ACCEPTED_FORMATS)} (int8 is an alias of qat_int8).")
flags.register_validator(
    "formats",
    lambda values: bool(values) and all(value in _ACCEPTED_FORMATS for value in values),
    message=f"--formats must be a comma-separated list of {','.join(_ACCEPTED_FORMATS)}",
)
flags.DEFINE_enum("input_type", None, _IO_TYPES, "Input tensor type of ptq_int8 and qat_int8; unset means int8.")
flags.DEFINE_enum("output_type", None, _IO_TYPES, "Output tensor type of ptq_int8 and qat_int8; unset means int8.")
flags.DEFINE_enum("target", "cpu", _TARGETS, "cpu: dynamic batch dimension. edgetpu: static [1, H, W, C] input, "
                  "full-integer formats only.")
flags.DEFINE_list("per_channel_formats", list(DEFAULT_PER_CHANNEL_FORMATS), "Comma-separated full-integer formats "
                  "(ptq_int8, qat_int8) whose kernels get one int8 scale per output channel; the others get one "
                  "per tensor. Empty for none.")
flags.register_validator(
    "per_channel_formats",
    lambda values: all(value in _INTEGER_FORMATS for value in values),
    message=f"--per_channel_formats must be a comma-separated list of {','.join(_INTEGER_FORMATS)}, or empty",
)
flags.DEFINE_bool("keep_tensor_names", False, "Keep the names of intermediate tensors in the .tflite files "
                  "(for Netron and similar tools); by default they are stripped to save space.")
flags.DEFINE_enum("normalization", "sidecar", NORMALIZATION_MODES, "sidecar: the model takes normalized images and "
                  "model_{format}.json gives mean and std. baked: the model takes raw pixels 0..255.")
flags.DEFINE_integer("qat_epochs", 1, "Epochs of QAT fine-tuning on the training split; at least 1 for qat_int8.",
                     lower_bound=0)
flags.DEFINE_float("learning_rate", 1e-3, "Learning rate of QAT fine-tuning (SGD, Nesterov momentum 0.9).",
                   lower_bound=0.0)
flags.DEFINE_integer("batch_size", 64, "Batch size of QAT fine-tuning, calibration and evaluation.", lower_bound=1)
flags.DEFINE_integer("num_calibration_batches", 100, "Training batches that calibrate ptq_int8.", lower_bound=1)
flags.DEFINE_integer("latency_runs", 50, "Timed single-image runs per file and thread count; 0 skips latency.",
                     lower_bound=0)
flags.DEFINE_list("latency_threads", ["1", "2"], "Comma-separated interpreter thread counts to time.")
flags.register_validator(
    "latency_threads",
    lambda values: bool(values) and all(value.isdigit() and int(value) >= 1 for value in values),
    message="--latency_threads must be a comma-separated list of positive integers",
)
flags.DEFINE_string("data_dir", None, "TFDS data folder; unset uses the one the run was trained with.")
flags.DEFINE_string("manual_dir", None, "Folder of manually downloaded archives; unset uses the run's.")
flags.DEFINE_integer("take_train", None, "Fine-tune and calibrate on only this many training examples.", lower_bound=1)
flags.DEFINE_integer("take_test", None, "Evaluate on only this many test examples.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the fine-tuning shuffle order and augmentation.", lower_bound=0)


def config_from_flags():
    """Return the `ExportConfig` that the parsed flags describe."""
    return ExportConfig(
        model_dir=FLAGS.model_dir,
        output_dir=FLAGS.output_dir,
        formats=tuple(FLAGS.formats),
        input_type=FLAGS.input_type,
        output_type=FLAGS.output_type,
        target=FLAGS.target,
        per_channel_formats=tuple(FLAGS.per_channel_formats),
        keep_tensor_names=FLAGS.keep_tensor_names,
        normalization=FLAGS.normalization,
        qat_epochs=FLAGS.qat_epochs,
        learning_rate=FLAGS.learning_rate,
        batch_size=FLAGS.batch_size,
        num_calibration_batches=FLAGS.num_calibration_batches,
        latency_runs=FLAGS.latency_runs,
        latency_threads=tuple(int(value) for value in FLAGS.latency_threads),
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

    from keras_densenet.export import compatibility
    from keras_densenet.export import job

    for name in results["settings"]["formats"]:
        print(compatibility.format_report(compatibility.inspect(results[name]["path"])))
    print(job.results_table(results))
    print(json.dumps(results, sort_keys=True))


def main():
    """Entry point of the densenet-export console script."""
    run_script(_main, __name__)


if __name__ == "__main__":
    main()
