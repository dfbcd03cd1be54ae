"""Markdown sections and PNG plots of the results that `benchmarks/run.py` measures."""

import io

from keras_densenet.utils import files
from keras_densenet.utils import report

SECTION_BEGIN = "<!-- benchmarks/run.py begin: generated, edit the script rather than this text -->"
SECTION_END = "<!-- benchmarks/run.py end -->"


def replace_section(document, section):
    """Return `document` with the text between the run.py markers replaced by `section`.

    When the markers are missing, the section is appended, so every other section of the document
    stays as it was.

    Raises:
        ValueError: if only one of the markers is in `document`, or the end marker comes first.
    """
    block = f"{SECTION_BEGIN}\n{section.strip()}\n{SECTION_END}\n"
    begin = document.find(SECTION_BEGIN)
    end = document.find(SECTION_END)
    if begin == -1 and end == -1:
        return document.rstrip("\n") + "\n\n" + block
    if begin == -1 or end == -1 or end < begin:
        raise ValueError(
            "`document` must contain both run.py markers in order, or neither; fix or remove them. "
            f"Received: begin marker at {begin}, end marker at {end}"
        )
    return document[:begin] + block + document[end + len(SECTION_END) :].lstrip("\n")


def _ordered(mapping, order):
    """Return the `(key, value)` pairs of `mapping` in the key order `order` (a list), when given.

    `results.json` is written with sorted keys, so the measured order travels as a list beside
    each dict and a section rendered again from the file matches the first rendering.
    """
    keys = order if order else list(mapping)
    return [(key, mapping[key]) for key in keys]


def _mib(value):
    return None if value is None else value / 2**20


def _throughput_table(group):
    rows = []
    for label, result in _ordered(group["models"], group.get("model_order")):
        rows.append(
            {
                "label": label,
                "parameters": result["parameters"] / 1e6,
                "images_per_second": result["images_per_second"],
                "step": min(result["step_seconds"]),
                "first_step": result["first_step_seconds"],
            }
        )
    table = report.markdown_table(
        rows,
        [
            ("label", "model", ""),
            ("parameters", "parameters (M)", ".3f"),
            ("images_per_second", "images/s (median step)", ".2f"),
            ("step", "fastest round (s/step)", ".3f"),
            ("first_step", "first step (s, with tracing)", ".1f"),
        ],
    )
    ratios = []
    for name, value in _ordered(group["ratios"], group.get("ratio_order")):
        numerator, denominator = (group["models"][label] for label in name.split(" / "))
        fastest = min(denominator["step_seconds"]) / min(numerator["step_seconds"])
        ratios.append(
            f"- {name}: {value:.3f} ({numerator['images_per_second']:.2f} / "
            f"{denominator['images_per_second']:.2f} images/s); fastest rounds: {fastest:.3f}"
        )
    return (
        table
        + "\nThroughput ratios from the median steps, then from the fastest rounds (above 1 means the first "
        "model is faster):\n\n"
        + "\n".join(ratios)
        + "\n"
    )


def throughput_section(results):
    imagenet = results["throughput"]["imagenet"]
    cifar = results["throughput"]["cifar"]
    settings = results["settings"]
    lines = [
        "## Training throughput",
        "",
        f"Images per second of one training step (`train_on_batch`, SGD with momentum, random images and "
        f"labels) after {settings['warmup_steps']} warm-up steps per model, then {settings['rounds']} "
        f"rounds that time {settings['steps']} consecutive steps of each model in turn; the throughput is "
        "the batch size over the median time per step across rounds. All models run in one process "
        "with the same TensorFlow.",
        "",
        f"{imagenet['model']} at {imagenet['image_size']}x{imagenet['image_size']}, batch "
        f"{imagenet['batch_size']}, 1000 classes, no XLA:",
        "",
        _throughput_table(imagenet),
        f"{cifar['model']} at {cifar['image_size']}x{cifar['image_size']}, batch {cifar['batch_size']}, "
        "10 classes; the naive builder is in `benchmarks/naive.py`:",
        "",
        _throughput_table(cifar),
        f"![Training throughput]({results['plots']['throughput']})",
        "",
    ]
    return "\n".join(lines)


def memory_section(results):
    memory = results["memory"]
    rows = []
    for row in memory["rows"]:
        rows.append(
            {
                "variant": f"`{row['variant']}`",
                "depth": row["depth"],
                "growth_rate": row["growth_rate"],
                "standard": row["standard"]["step_peak_mib"],
                "efficient": row["memory_efficient"]["step_peak_mib"],
                "reduction": row["step_peak_reduction"],
                "standard_seconds": row["standard"]["step_seconds"],
                "efficient_seconds": row["memory_efficient"]["step_seconds"],
            }
        )
    table = report.markdown_table(
        rows,
        [
            ("variant", "variant", ""),
            ("depth", "L", "d"),
            ("growth_rate", "k", "d"),
            ("standard", "step peak, standard (MiB)", ".0f"),
            ("efficient", "step peak, `memory_efficient=True` (MiB)", ".0f"),
            ("reduction", "reduction", ".0%"),
            ("standard_seconds", "s/step, standard", ".2f"),
            ("efficient_seconds", "s/step, efficient", ".2f"),
        ],
    )
    lines = [
        "## Memory against depth",
        "",
        f"Peak memory of one training step at batch {memory['batch_size']} on "
        f"{memory['image_size']}x{memory['image_size']} random images, measured by `benchmarks/memory.py` "
        "in one subprocess per configuration. The step peak is the TensorFlow CPU allocator's peak during "
        "the timed steps minus what it held before them (see \"Memory-efficient dense layers\" above).",
        "",
        table,
        f"![Step peak memory against depth]({results['plots']['memory']})",
        "",
    ]
    return "\n".join(lines)


def litert_section(results):
    litert = results["litert"]
    threads = litert["threads"]
    rows = []
    for label, result in _ordered(litert["formats"], litert.get("format_order")):
        row = {"label": label, "size": _mib(result["file_bytes"])}
        for count in threads:
            row[f"ms_{count}"] = result["latency"][str(count)]["median_ms"]
        row["ratio"] = result["latency"][str(threads[0])]["median_ms"] / litert["formats"]["ours float32"][
            "latency"
        ][str(threads[0])]["median_ms"]
        rows.append(row)
    columns = [("label", "model and format", ""), ("size", "file (MiB)", ".2f")]
    columns += [(f"ms_{count}", f"median ms, {count} thread{'s' if count > 1 else ''}", ".1f") for count in threads]
    columns.append(("ratio", f"latency / ours float32 ({threads[0]} thread{'s' if threads[0] > 1 else ''})", ".3f"))
    targets = litert["targets"]
    lines = [
        "## LiteRT latency and size",
        "",
        f"Single-image inference at {litert['image_size']}x{litert['image_size']} in the LiteRT "
        f"interpreter (ai-edge-litert) with its default XNNPACK delegate: median of "
        f"{litert['runs'] * litert['rounds']} `invoke` calls per model after {litert['warmup_runs']} "
        f"warm-up calls, in {litert['rounds']} rounds that alternate between the models. The weights "
        f"are random; keras.applications' int8 model was calibrated on {litert['calibration_images']} "
        "random normal images, and our int8 model is the QAT model from `quantize_model` without "
        "fine-tuning, with `densenet-export`'s default kernel scales for qat_int8 (one per tensor). "
        "keras.applications' int8 model keeps the converter's default of one scale per output channel. "
        "Latency and size do not depend on the weight values.",
        "",
        report.markdown_table(rows, columns),
        "Targets, from the same run:",
        "",
        f"- ours int8 (QAT) / ours float32 latency: {targets['qat_over_float32']:.3f} "
        f"({threads[0]} thread{'s' if threads[0] > 1 else ''}; target at most 0.6: "
        f"{'met' if targets['qat_over_float32_met'] else 'not met'}).",
        f"- ours int8 (QAT) / keras.applications int8 (PTQ) latency: {targets['qat_over_applications']:.3f} "
        f"(target at most 1.0: {'met' if targets['qat_over_applications_met'] else 'not met'}).",
        "",
        f"![LiteRT latency]({results['plots']['latency']})",
        "",
    ]
    return "\n".join(lines)


def export_time_section(results):
    export_time = results["export_time"]
    lines = [
        "## Export time",
        "",
        f"- Conversion of the QAT {results['litert']['model']} to int8 (`keras_densenet.export.convert` only): "
        f"{export_time['qat_convert_seconds']:.1f} s. Building the QAT model with `quantize_model` "
        f"before it took {export_time['quantize_model_seconds']:.1f} s.",
        f"- Conversion to float32: {export_time['float32_convert_seconds']:.1f} s; to float16: "
        f"{export_time['float16_convert_seconds']:.1f} s; keras.applications' model to int8 with "
        f"calibration: {export_time['applications_int8_convert_seconds']:.1f} s.",
    ]
    pipeline = export_time.get("pipeline")
    if pipeline is None:
        lines.append("- The main job was not run (`--skip_pipeline`).")
    else:
        lines.append(
            f"- The main job, `{pipeline['command']}` in a new temporary folder: "
            f"{pipeline['wall_seconds']:.0f} s of wall time."
        )
    lines.append("")
    return "\n".join(lines)


def render_section(results):
    """Return the Markdown of every section that `benchmarks/run.py` owns in BENCHMARKS.md."""
    machine = results["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in sorted(machine["packages"].items()))
    load = results["load_average"]
    header = [
        "## How the following sections were measured",
        "",
        "Command (one run writes all four sections, `benchmarks/results.json` and the plots):",
        "",
        "```bash",
        results["command"],
        "```",
        "",
        f"Machine: {machine['processor']}, {machine['cpu_count']} cores, no GPU; Python {machine['python']}, "
        f"{packages}.",
        "",
        f"Load: the 1-minute load average was {load['start'][0]:.2f} at the start and {load['end'][0]:.2f} "
        "at the end of the run. Other processes shared the cores, so absolute numbers carry that noise; "
        "the ratios come from runs interleaved in the same process and are less affected.",
        "",
    ]
    sections = [
        "\n".join(header),
        throughput_section(results),
        memory_section(results),
        litert_section(results),
        export_time_section(results),
    ]
    return "\n".join(sections)


def _save(figure, path):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    files.write_bytes_atomic(path, buffer.getvalue())


def plot_throughput(path, results):
    """Draw the images/s of each model of both throughput groups as bar charts into a PNG."""
    from matplotlib.figure import Figure  # The Figure API needs no pyplot backend, so no global state changes.

    figure = Figure(figsize=(12, 4.5))
    groups = results["throughput"]
    for index, key in enumerate(("imagenet", "cifar")):
        axis = figure.add_subplot(1, 2, index + 1)
        group = groups[key]
        labels = [label for label, _ in _ordered(group["models"], group.get("model_order"))]
        values = [group["models"][label]["images_per_second"] for label in labels]
        axis.barh(labels, values)
        axis.invert_yaxis()
        axis.set_xlabel("images/s (higher is better)")
        axis.set_title(f"{group['model']}, {group['image_size']}px, batch {group['batch_size']}")
        axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    _save(figure, path)


def plot_memory(path, results):
    """Draw the step peak memory against depth, standard and memory-efficient, into a PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.5))
    axis = figure.add_subplot(1, 1, 1)
    rows = results["memory"]["rows"]
    depths = [row["depth"] for row in rows]
    for key, label in (("standard", "standard"), ("memory_efficient", "memory_efficient=True")):
        axis.plot(depths, [row[key]["step_peak_mib"] for row in rows], marker="o", label=label)
    for row in rows:
        axis.annotate(f"k={row['growth_rate']}", (row["depth"], row["standard"]["step_peak_mib"]), fontsize=8)
    axis.set_xlabel("depth L")
    axis.set_ylabel("step peak memory (MiB)")
    axis.set_title(f"One training step, batch {results['memory']['batch_size']}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    _save(figure, path)


def plot_latency(path, results):
    """Draw the median LiteRT latency of each model and format per thread count into a PNG."""
    from matplotlib.figure import Figure

    litert = results["litert"]
    labels = [label for label, _ in _ordered(litert["formats"], litert.get("format_order"))]
    threads = litert["threads"]
    figure = Figure(figsize=(8, 4.5))
    axis = figure.add_subplot(1, 1, 1)
    height = 0.8 / len(threads)
    for index, count in enumerate(threads):
        values = [litert["formats"][label]["latency"][str(count)]["median_ms"] for label in labels]
        positions = [i + index * height for i in range(len(labels))]
        axis.barh(positions, values, height=height, label=f"{count} thread{'s' if count > 1 else ''}")
    axis.set_yticks([i + height * (len(threads) - 1) / 2 for i in range(len(labels))], labels)
    axis.invert_yaxis()
    axis.set_xlabel("median latency per image (ms, lower is better)")
    axis.grid(axis="x", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    _save(figure, path)
