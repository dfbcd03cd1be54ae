"""Measure keras-densenet against keras.applications and a naive builder, and write the results.

See `suite.py` beside this file for what one run measures and writes. Each flag sets the
`BenchmarkConfig` field of the same name; `--markdown` sets `markdown_path`.

Usage:
    python benchmarks/run.py
    python benchmarks/run.py --tiny --skip_pipeline --output_dir=/tmp/bench --markdown=/tmp/bench/BENCHMARKS.md
    python benchmarks/run.py --render_only  # plots and Markdown again from benchmarks/results.json
"""

import dataclasses
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # The modules beside this script.

import suite  # noqa: E402

FLAGS = flags.FLAGS
_DEFAULTS = suite.BenchmarkConfig()
flags.DEFINE_bool("tiny", False, "Run every measurement at a tiny size (the smoke test's); the size flags below are ignored.")
flags.DEFINE_string("output_dir", _DEFAULTS.output_dir, "Folder of results.json and the PNG plots.")
flags.DEFINE_string("markdown", _DEFAULTS.markdown_path, "Markdown file whose run.py sections are replaced or appended.")
flags.DEFINE_integer("imagenet_batch_size", _DEFAULTS.imagenet_batch_size, "Batch size of the DenseNet-121 throughput comparison.", lower_bound=1)
flags.DEFINE_integer("imagenet_image_size", _DEFAULTS.imagenet_image_size, "Input side of the DenseNet-121 throughput comparison, in pixels.", lower_bound=32)
flags.DEFINE_enum("cifar_variant", _DEFAULTS.cifar_variant, ["densenet_bc22_k8", "densenet_bc40_k12", "densenet_bc100_k12", "densenet_bc190_k40", "densenet_bc250_k24"], "DenseNet-BC variant compared with the naive builder.")
flags.DEFINE_integer("cifar_batch_size", _DEFAULTS.cifar_batch_size, "Batch size of the naive-builder comparison.", lower_bound=1)
flags.DEFINE_integer("cifar_image_size", _DEFAULTS.cifar_image_size, "Input side of the naive-builder comparison, in pixels.", lower_bound=4)
flags.DEFINE_integer("warmup_steps", _DEFAULTS.warmup_steps, "Untimed train steps per model before timing.", lower_bound=1)
flags.DEFINE_integer("steps", _DEFAULTS.steps, "Consecutive timed train steps per model in each round.", lower_bound=1)
flags.DEFINE_integer("rounds", _DEFAULTS.rounds, "Timed rounds of each throughput comparison.", lower_bound=1)
flags.DEFINE_list("memory_variants", list(_DEFAULTS.memory_variants), "Comma-separated variants of the memory sweep.")
flags.DEFINE_integer("memory_batch_size", _DEFAULTS.memory_batch_size, "Batch size of the memory sweep.", lower_bound=1)
flags.DEFINE_integer("memory_image_size", _DEFAULTS.memory_image_size, "Input side of the memory sweep, in pixels.", lower_bound=4)
flags.DEFINE_integer("memory_steps", _DEFAULTS.memory_steps, "Timed steps per memory subprocess, after one warm-up step.", lower_bound=1)
flags.DEFINE_integer("latency_image_size", _DEFAULTS.latency_image_size, "Input side of the exported DenseNet-121 models, in pixels.", lower_bound=32)
flags.DEFINE_list("threads", [str(t) for t in _DEFAULTS.threads], "Comma-separated LiteRT thread counts.")
flags.DEFINE_integer("latency_warmup_runs", _DEFAULTS.latency_warmup_runs, "Untimed LiteRT invoke calls per model.", lower_bound=0)
flags.DEFINE_integer("latency_runs", _DEFAULTS.latency_runs, "Timed LiteRT invoke calls per model and round.", lower_bound=1)
flags.DEFINE_integer("latency_rounds", _DEFAULTS.latency_rounds, "Rounds of LiteRT timing, alternating between models.", lower_bound=1)
flags.DEFINE_integer("calibration_images", _DEFAULTS.calibration_images, "Random images that calibrate keras.applications' int8 model.", lower_bound=1)
flags.DEFINE_bool("render_only", False, "Measure nothing: rewrite the plots and the Markdown sections from "
                  "{output_dir}/results.json.")
flags.DEFINE_bool("skip_pipeline", False, "Do not run the main job (densenet-pipeline).")
flags.DEFINE_list("pipeline_flags", [], "Comma-separated extra flags of densenet-pipeline, such as --epochs=1.")

flags.register_validator(
    "threads",
    lambda values: bool(values) and all(value.isdigit() and int(value) >= 1 for value in values),
    message="--threads must be a comma-separated list of positive integers, such as 1,2.",
)


def config_from_flags():
    """Return the `BenchmarkConfig` that the parsed flags describe."""
    command = " ".join(["python benchmarks/run.py", *sys.argv[1:]])
    if FLAGS.tiny:
        return dataclasses.replace(
            suite.tiny_config(FLAGS.output_dir, FLAGS.markdown, skip_pipeline=FLAGS.skip_pipeline), command=command
        )
    return suite.BenchmarkConfig(
        output_dir=FLAGS.output_dir,
        markdown_path=FLAGS.markdown,
        imagenet_batch_size=FLAGS.imagenet_batch_size,
        imagenet_image_size=FLAGS.imagenet_image_size,
        cifar_variant=FLAGS.cifar_variant,
        cifar_batch_size=FLAGS.cifar_batch_size,
        cifar_image_size=FLAGS.cifar_image_size,
        warmup_steps=FLAGS.warmup_steps,
        steps=FLAGS.steps,
        rounds=FLAGS.rounds,
        memory_variants=tuple(FLAGS.memory_variants),
        memory_batch_size=FLAGS.memory_batch_size,
        memory_image_size=FLAGS.memory_image_size,
        memory_steps=FLAGS.memory_steps,
        latency_image_size=FLAGS.latency_image_size,
        threads=tuple(int(value) for value in FLAGS.threads),
        latency_warmup_runs=FLAGS.latency_warmup_runs,
        latency_runs=FLAGS.latency_runs,
        latency_rounds=FLAGS.latency_rounds,
        calibration_images=FLAGS.calibration_images,
        skip_pipeline=FLAGS.skip_pipeline,
        pipeline_flags=tuple(FLAGS.pipeline_flags),
        command=command,
    )


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    from keras_densenet.cli.common import run_or_exit

    if FLAGS.render_only:
        run_or_exit(suite.rewrite_outputs, FLAGS.output_dir, FLAGS.markdown)
    else:
        run_or_exit(suite.run, config_from_flags())


def main():
    """Entry point: parse the flags and run the benchmarks."""
    app.run(_main)


if __name__ == "__main__":
    main()
