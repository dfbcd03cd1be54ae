"""Measure every export format on digits: top-1, agreement, size and latency in the LiteRT interpreter.

Runs the end-to-end job (`keras_densenet.pipeline.run`: float training with the paper's recipe, QAT
fine-tuning, conversion to every format, evaluation on the test split) and prints the results
table of `{output_dir}/export/export.md`, the settings and the machine. The chart of top-1 against
size and latency is `{output_dir}/export/export_formats.png`.

Usage:
    python benchmarks/export_formats.py --output_dir=runs/export_formats
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/export_formats", "Folder of the run; a second run resumes training.")
flags.DEFINE_string("variant", "densenet_bc40_k12", "DenseNet variant (the pipeline's default).")
flags.DEFINE_integer("epochs", 40, "Float training epochs.", lower_bound=1)
flags.DEFINE_integer("qat_epochs", 3, "QAT fine-tuning epochs.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of initialization, shuffling and augmentation.", lower_bound=0)


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    from keras_densenet import pipeline
    from keras_densenet.export import job

    config = pipeline.PipelineConfig(
        output_dir=FLAGS.output_dir,
        variant=FLAGS.variant,
        epochs=FLAGS.epochs,
        qat_epochs=FLAGS.qat_epochs,
        formats=job.DEFAULT_FORMATS,
        seed=FLAGS.seed,
    )
    summary = pipeline.run(config)
    with open(os.path.join(FLAGS.output_dir, "export", "export.json"), encoding="utf-8") as f:
        results = json.load(f)
    logging.info("Finished in %s s", summary["seconds"]["total"])
    print(job.results_table(results))
    print(json.dumps({"environment": summary["environment"], "seconds": summary["seconds"]}, indent=2))


if __name__ == "__main__":
    app.run(_main)
