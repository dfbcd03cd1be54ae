"""Measure every export format on digits: top-1, agreement, size and latency in the LiteRT interpreter.

Runs the end-to-end job (`keras_densenet.pipeline.run`: float training with the paper's recipe, QAT
fine-tuning, conversion to every format, evaluation on the test split) and prints the results
table of `{output_dir}/export/export.md`, the settings and the machine. The chart of top-1 against
size and latency is `{output_dir}/export/export_formats.png`.

Then it exports the same trained model to ptq_int8 and qat_int8 with the kernel scales swapped
(PTQ per tensor, QAT per channel) into `{output_dir}/export_swapped_scales` and prints that table,
so both choices of each integer format are measured on the same model.

Usage:
    python benchmarks/export_formats.py --output_dir=runs/export_formats
"""

import dataclasses
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

    swapped = dataclasses.replace(
        config.export_config(),
        output_dir=os.path.join(FLAGS.output_dir, "export_swapped_scales"),
        formats=("float32", "ptq_int8", "qat_int8"),
        per_channel_formats=tuple(name for name in ("ptq_int8", "qat_int8") if name not in job.DEFAULT_PER_CHANNEL_FORMATS),
    )
    logging.info("Exporting again with per_channel_formats=%s", list(swapped.per_channel_formats))
    print(job.results_table(job.run(swapped)))
    print(json.dumps({"environment": summary["environment"], "seconds": summary["seconds"]}, indent=2))


if __name__ == "__main__":
    app.run(_main)
