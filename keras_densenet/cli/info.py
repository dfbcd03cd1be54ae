"""densenet-info: print parameters, multiply-accumulates, layers and stage output shapes of DenseNet variants.

Example:
    densenet-info --variant=densenet121 --input_size=224
    densenet-info --variant=all --input_size=32 --format=json
"""

import json

from absl import app
from absl import flags

from keras_densenet.cli.common import run_or_exit
from keras_densenet.cli.common import run_script
from keras_densenet.model import specs

FLAGS = flags.FLAGS
flags.DEFINE_enum("variant", "all", ["all"] + sorted(specs.VARIANTS), "Variant to describe; all describes every variant.")
flags.DEFINE_string("input_size", None, "Input height and width in pixels, as one number or HEIGHTxWIDTH (e.g. "
                    "200x160). Unset: each variant's default size (224 ImageNet, 32 CIFAR).")
flags.DEFINE_integer("channels", 3, "Input channels.", lower_bound=1)
flags.DEFINE_integer("classes", 1000, "Classifier outputs.", lower_bound=1)
flags.DEFINE_boolean("include_top", True, "Count the classifier.")
flags.DEFINE_enum("format", "table", ["table", "json"], "Output format.")


def parse_input_size(text):
    """Return `(height, width)` from `"224"` or `"200x160"`, or None for None.

    Raises:
        ValueError: if `text` is not one positive integer or two joined by `x`.
    """
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise ValueError(
            f"`input_size` must be one positive integer or HEIGHTxWIDTH, e.g. 224 or 200x160. Received: input_size={text!r}"
        )
    sizes = [int(part) for part in parts]
    return (sizes[0], sizes[0]) if len(sizes) == 1 else tuple(sizes)


def run(variants, input_size=None, channels=3, classes=1000, include_top=True):
    """Return one `summarize` dict per variant in `variants`.

    Raises:
        ValueError: on an unknown variant or an input too small for a variant.
    """
    from keras_densenet.model import summary  # Imports TensorFlow.

    return [
        summary.summarize(variant, input_size=input_size, channels=channels, classes=classes, include_top=include_top)
        for variant in variants
    ]


def format_table(rows):
    """Return the summaries in `rows` as a fixed-width text table, one line per variant."""
    header = f"{'variant':<20} {'input':>11} {'depth':>5} {'layers':>6} {'trainable':>12} {'total':>12} {'MACs':>15}  stages (stride: HxWxC)"
    lines = [header, "-" * len(header)]
    for row in rows:
        size = "x".join(str(side) for side in row["input_shape"])
        stages = ", ".join(f"{stage['stride']}: {'x'.join(str(d) for d in stage['shape'])}" for stage in row["stages"])
        lines.append(
            f"{row['variant']:<20} {size:>11} {row['depth']:>5} {row['keras_layers']:>6} "
            f"{row['trainable_params']:>12,} {row['total_params']:>12,} {row['macs']:>15,}  {stages}"
        )
    return "\n".join(lines)


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    input_size = run_or_exit(parse_input_size, FLAGS.input_size)
    variants = sorted(specs.VARIANTS) if FLAGS.variant == "all" else [FLAGS.variant]
    rows = run_or_exit(run, variants, input_size, FLAGS.channels, FLAGS.classes, FLAGS.include_top)
    print(json.dumps(rows, indent=2) if FLAGS.format == "json" else format_table(rows))


def main():
    run_script(_main, __name__)


if __name__ == "__main__":
    main()
