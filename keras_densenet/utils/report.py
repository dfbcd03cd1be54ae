"""Result tables people compare: Markdown rendering, training-curve plots, run environment."""

import io
import os
import platform

from keras_densenet.utils import files


def markdown_table(rows, columns):
    """Render `rows` (a list of dicts) as a GitHub Markdown table.

    Args:
        rows: One dict per row.
        columns: `(key, header, format)` triples; `format` is a format spec such as `".2%"`, or `""`.
            A missing or `None` value renders as `-`.
    """
    lines = [
        "| " + " | ".join(header for _, header, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        cells = []
        for key, _, spec in columns:
            value = row.get(key)
            cells.append("-" if value is None else format(value, spec))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_training_curves(path, histories):
    """Plot loss and accuracy per epoch of one or more training phases into a PNG, atomically.

    Args:
        path: Output `.png` path.
        histories: Mapping of phase name (for example `"float"`, `"qat"`) to a Keras history dict
            with `loss` and `accuracy` lists, and optionally `val_loss` and `val_accuracy`. Phases are
            drawn one after the other on a shared epoch axis.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)  # NOTE: selects the non-interactive backend for the process.
    from matplotlib import pyplot

    figure, (loss_axis, accuracy_axis) = pyplot.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for phase, history in histories.items():
        epochs = list(range(offset + 1, offset + len(history.get("loss", [])) + 1))
        for axis, key in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
            if history.get(key):
                axis.plot(epochs, history[key], label=f"{phase} train")
            if history.get(f"val_{key}"):
                axis.plot(epochs, history[f"val_{key}"], linestyle="--", label=f"{phase} test")
        offset += len(epochs)
    loss_axis.set_title("Loss")
    accuracy_axis.set_title("Top-1 accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot.close(figure)
    files.write_bytes_atomic(path, buffer.getvalue())


def environment():
    """Return the machine and package versions that measured numbers depend on."""
    from importlib import metadata

    versions = {}
    for package in ("tensorflow", "tf-keras", "tensorflow-model-optimization", "tensorflow-datasets", "ai-edge-litert"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
