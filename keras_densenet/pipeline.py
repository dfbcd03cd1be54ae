"""The end-to-end job: train a DenseNet, fine-tune it with QAT, export .tflite files, evaluate all.

`run(PipelineConfig(output_dir=...))` writes into `output_dir`:

    train/               the densenet-train run (config.json, history.json, checkpoints, logs, model.h5)
    export/              qat_model.h5, model_float32.tflite, model_qat_int8.tflite, their sidecar and
                         compatibility JSON files, export.json, export.md, export_formats.png
    report.json          every result and setting of the job (fields in the README)
    report.md            the results table, also printed
    training_curves.png  loss and top-1 accuracy per epoch of float training and QAT fine-tuning
"""

import dataclasses
import os
import time
from typing import Optional, Tuple

from absl import logging

from keras_densenet.training import config as train_config_lib
from keras_densenet.utils import files
from keras_densenet.utils import report

@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Settings of the end-to-end job. The defaults reach the README's numbers on digits.

    Attributes:
        output_dir: Folder of every output. Running again in the same folder resumes the training
            run and redoes the export.
        variant: DenseNet variant, a name from `keras_densenet.VARIANTS`.
        dataset: TFDS image-classification dataset; `digits` ships with the install.
        data_dir: TFDS data folder; `None` uses the TFDS default.
        epochs: Float training epochs. The learning rate drops 10x at 50% and again at 75% of them.
        batch_size: Global batch size of training and QAT fine-tuning.
        learning_rate: Initial learning rate of float training.
        qat_epochs: QAT fine-tuning epochs.
        qat_learning_rate: Learning rate of QAT fine-tuning.
        formats: `.tflite` formats to export, from `keras_densenet.export.QUANTIZATION_TYPES`.
        seed: Seed of initialization, shuffling and augmentation.
        take_train: Use only this many training examples (quick runs); `None` uses all.
    """

    output_dir: str
    variant: str = "densenet_bc40_k12"
    dataset: str = "digits"
    data_dir: Optional[str] = None
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 0.1
    qat_epochs: int = 3
    qat_learning_rate: float = 1e-3
    formats: Tuple[str, ...] = ("float32", "qat_int8")
    seed: int = 0
    take_train: Optional[int] = None

    def train_config(self):
        """Return the `TrainConfig` of the float training step."""
        return train_config_lib.TrainConfig(
            model_dir=os.path.join(self.output_dir, "train"),
            variant=self.variant,
            dataset=self.dataset,
            data_dir=self.data_dir,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            seed=self.seed,
            take_train=self.take_train,
        )

    def export_config(self):
        """Return the `ExportConfig` of the QAT, conversion and evaluation steps."""
        from keras_densenet.export import job as export_job

        return export_job.ExportConfig(
            model_dir=os.path.join(self.output_dir, "train"),
            output_dir=os.path.join(self.output_dir, "export"),
            formats=tuple(self.formats),
            qat_epochs=self.qat_epochs,
            learning_rate=self.qat_learning_rate,
            batch_size=self.batch_size,
            data_dir=self.data_dir,
            take_train=self.take_train,
            seed=self.seed,
        )


def run(config):
    """Run the whole job that `config` describes and write its report.

    Every setting is checked before the first file is written.

    Args:
        config: A `PipelineConfig`.

    Returns:
        The dict written to `report.json`.

    Raises:
        ValueError: on an invalid setting (the message names it) or an unreadable earlier run in
            `output_dir`.
    """
    from keras_densenet.export import job as export_job
    from keras_densenet.training import train

    train_config = config.train_config()
    export_config = config.export_config()
    train_config.validate_fields()
    export_job.check_config(export_config)

    started = time.perf_counter()

    # 1. Float training with the recipe of Huang et al. (CVPR 2017).
    logging.info("Step 1/2: training %s on %s for %d epochs.", config.variant, config.dataset, config.epochs)
    trained = train.run(train_config)
    train_seconds = time.perf_counter() - started

    # 2. QAT fine-tuning, conversion, and evaluation of every model in the LiteRT interpreter.
    logging.info("Step 2/2: QAT fine-tuning for %d epochs, export to %s.", config.qat_epochs, ", ".join(config.formats))
    results = export_job.run(export_config)
    total_seconds = time.perf_counter() - started

    # 3. Report.
    table = export_job.results_table(results)
    summary = {
        "config": dataclasses.asdict(config),
        "train_config": trained.config.to_dict(),
        "dataset": {
            "name": config.dataset,
            "num_test_examples": results["num_test_examples"],
        },
        "results": {key: results[key] for key, _ in export_job.RESULT_ROWS if key in results},
        "history": {"float": trained.history, "qat": results.get("qat_history", {})},
        "seconds": {
            "train": round(train_seconds, 1),
            "export": round(total_seconds - train_seconds, 1),
            "total": round(total_seconds, 1),
        },
        "environment": report.environment(),
    }
    files.write_json_atomic(os.path.join(config.output_dir, "report.json"), summary)
    files.write_text_atomic(os.path.join(config.output_dir, "report.md"), _report_markdown(config, summary, table))
    report.plot_training_curves(
        os.path.join(config.output_dir, "training_curves.png"),
        {"float": summary["history"]["float"], "QAT": summary["history"]["qat"]},
    )
    logging.info("Results on the %d test examples of %s:\n%s", results["num_test_examples"], config.dataset, table)
    return summary


def _report_markdown(config, summary, table):
    seconds = summary["seconds"]
    return (
        f"# {config.variant} on {config.dataset}\n\n"
        f"Test split: {summary['dataset']['num_test_examples']} examples. "
        f"Float training: {config.epochs} epochs; QAT fine-tuning: {config.qat_epochs} epochs. "
        f"Wall time: {seconds['total']:.0f} s (training {seconds['train']:.0f} s, "
        f"QAT, export and evaluation {seconds['export']:.0f} s).\n\n"
        f"{table}\n"
        "![training curves](training_curves.png)\n"
    )
