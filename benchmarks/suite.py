"""The measurements behind benchmarks/run.py, callable without flags as `run(BenchmarkConfig(...))`.

One run measures, in this order:

1. peak memory of one training step with and without `memory_efficient=True` for several depths,
   each configuration in its own `benchmarks/memory.py` subprocess;
2. training throughput of our DenseNet-121 and of tf_keras.applications' and keras.applications'
   (Keras 3) DenseNet121, interleaved in this process. Then our DenseNet-BC against the naive
   builder of `benchmarks/naive.py`, with and without XLA;
3. `.tflite` conversion time, file size and LiteRT latency of our DenseNet-121 in float32, float16
   and QAT int8, and of keras.applications' DenseNet121 in post-training int8;
4. the wall time of the main job, `densenet-pipeline`, in a subprocess.

It writes `results.json` and three PNG plots into `--output_dir` and replaces its own sections of
`--markdown`, leaving the rest of that file as it was.

"""

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from typing import Tuple

from absl import logging

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
REPOSITORY_DIR = os.path.dirname(BENCHMARKS_DIR)
MEMORY_SCRIPT = os.path.join(BENCHMARKS_DIR, "memory.py")

OURS = "ours (keras_densenet)"
TF_KERAS_APPLICATIONS = "tf_keras.applications"
KERAS_APPLICATIONS = "keras.applications (Keras 3)"
NAIVE = "naive builder"
XLA = " + XLA"

LATENCY_FORMATS = ("ours float32", "ours float16", "ours int8 (QAT)", "keras.applications int8 (PTQ)")
QAT_LATENCY_TARGET = 0.6  # Our QAT int8 latency over our float32 latency, at most.


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """Sizes and outputs of one benchmark run.

    The defaults follow the benchmark plan (DenseNet-121 at 224x224, DenseNet-BC L=100, 190 and 250
    on 32x32), except `memory_batch_size`: 8 rather than 64, because DenseNet-BC (L=190, k=40) at
    batch 64 needs an estimated 30 GiB for one standard training step.

    Attributes:
        output_dir: Folder of `results.json` and the PNG plots.
        markdown_path: Markdown file whose run.py sections are replaced (or appended).
        tiny: Replace DenseNet-121 by the same layout with one dense layer per block, in ours and in
            both applications builders, so that a smoke test runs in seconds. The applications
            builders then come from their private `DenseNet(blocks)` functions.
        imagenet_batch_size: Batch size of the DenseNet-121 throughput comparison.
        imagenet_image_size: Input side of the DenseNet-121 throughput comparison, in pixels.
        cifar_variant: DenseNet-BC variant of the naive-builder and XLA comparison.
        cifar_batch_size: Batch size of that comparison.
        cifar_image_size: Input side of that comparison, in pixels.
        warmup_steps: Untimed train steps per model before timing.
        steps: Consecutive timed train steps per model in each round.
        rounds: Timed rounds of each throughput comparison.
        memory_variants: Variants of the memory sweep, each measured with and without
            `memory_efficient=True`.
        memory_batch_size: Batch size of the memory sweep.
        memory_image_size: Input side of the memory sweep, in pixels.
        memory_steps: Timed steps per memory subprocess, after one warm-up step.
        latency_image_size: Input side of the exported models, in pixels.
        threads: LiteRT thread counts to time.
        latency_warmup_runs: Untimed `invoke` calls per model before timing.
        latency_runs: Timed `invoke` calls per model and round.
        latency_rounds: Rounds of latency timing, alternating between models.
        calibration_images: Random images that calibrate keras.applications' int8 model.
        skip_pipeline: Do not run the main job.
        pipeline_flags: Extra flags of `densenet-pipeline`, such as `("--epochs=1",)`.
        command: The command line recorded in the results; `run` fills in a default when empty.
    """

    output_dir: str = BENCHMARKS_DIR
    markdown_path: str = os.path.join(REPOSITORY_DIR, "BENCHMARKS.md")
    tiny: bool = False
    imagenet_batch_size: int = 8
    imagenet_image_size: int = 224
    cifar_variant: str = "densenet_bc100_k12"
    cifar_batch_size: int = 64
    cifar_image_size: int = 32
    warmup_steps: int = 2
    steps: int = 2
    rounds: int = 3
    memory_variants: Tuple[str, ...] = ("densenet_bc100_k12", "densenet_bc190_k40", "densenet_bc250_k24")
    memory_batch_size: int = 8
    memory_image_size: int = 32
    memory_steps: int = 1
    latency_image_size: int = 224
    threads: Tuple[int, ...] = (1, 2)
    latency_warmup_runs: int = 2
    latency_runs: int = 5
    latency_rounds: int = 3
    calibration_images: int = 8
    skip_pipeline: bool = False
    pipeline_flags: Tuple[str, ...] = ()
    command: str = ""


def tiny_config(output_dir, markdown_path, skip_pipeline=False):
    """Return a `BenchmarkConfig` that exercises every measurement in well under a minute.

    Args:
        output_dir: As `BenchmarkConfig.output_dir`.
        markdown_path: As `BenchmarkConfig.markdown_path`.
        skip_pipeline: As `BenchmarkConfig.skip_pipeline`. When run, the main job trains
            `densenet_bc22_k8` on 64 digits for one epoch and one QAT epoch.
    """
    return BenchmarkConfig(
        output_dir=output_dir,
        markdown_path=markdown_path,
        tiny=True,
        imagenet_batch_size=2,
        imagenet_image_size=32,
        cifar_variant="densenet_bc22_k8",
        cifar_batch_size=4,
        cifar_image_size=8,
        warmup_steps=1,
        steps=1,
        rounds=2,
        memory_variants=("densenet_bc22_k8",),
        memory_batch_size=8,
        memory_image_size=16,
        memory_steps=1,
        latency_image_size=32,
        threads=(1, 2),
        latency_warmup_runs=1,
        latency_runs=2,
        latency_rounds=1,
        calibration_images=2,
        skip_pipeline=skip_pipeline,
        pipeline_flags=(
            "--variant=densenet_bc22_k8", "--epochs=1", "--qat_epochs=1", "--take_train=64", "--batch_size=32",
        ),
    )


def _check_config(config):
    import keras_densenet

    positive = (
        "imagenet_batch_size", "imagenet_image_size", "cifar_batch_size", "cifar_image_size", "warmup_steps",
        "steps", "rounds", "memory_batch_size", "memory_image_size", "memory_steps", "latency_image_size",
        "latency_runs", "latency_rounds", "calibration_images",
    )
    for name in positive:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    if isinstance(config.latency_warmup_runs, bool) or not isinstance(config.latency_warmup_runs, int) or (
        config.latency_warmup_runs < 0
    ):
        raise ValueError(
            f"`latency_warmup_runs` must be a non-negative integer. Received: latency_warmup_runs={config.latency_warmup_runs!r}"
        )
    if not config.threads or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in config.threads):
        raise ValueError(f"`threads` must be a non-empty tuple of positive integers. Received: threads={config.threads!r}")
    if not config.memory_variants:
        raise ValueError("`memory_variants` must name at least one variant. Received: memory_variants=()")
    for variant in (config.cifar_variant, *config.memory_variants):
        if variant not in keras_densenet.VARIANTS:
            raise ValueError(
                f"Variants must be names from keras_densenet.VARIANTS: {', '.join(sorted(keras_densenet.VARIANTS))}. "
                f"Received: variant={variant!r}"
            )
    if not keras_densenet.VARIANTS[config.cifar_variant].bottleneck:
        raise ValueError(
            "`cifar_variant` must be a DenseNet-BC variant, because the naive builder builds only those. "
            f"Received: cifar_variant={config.cifar_variant!r}"
        )
    sizes = (
        ("imagenet_image_size", "densenet121"),
        ("latency_image_size", "densenet121"),
        ("cifar_image_size", config.cifar_variant),
    )
    for name, variant in sizes:
        minimum = keras_densenet.min_input_side(variant)
        value = getattr(config, name)
        if value < max(minimum, 32 if variant == "densenet121" else 1):
            raise ValueError(
                f"`{name}` must be at least {max(minimum, 32 if variant == 'densenet121' else 1)} pixels for "
                f"{variant} (keras.applications' DenseNet121 needs 32). Received: {name}={value}"
            )


def _imagenet_builders(config):
    """Return builders of ours, tf_keras.applications' and keras.applications' DenseNet-121 (or the tiny layout)."""
    import keras
    import tf_keras

    import keras_densenet
    from keras_densenet.model import specs

    side = config.imagenet_image_size
    if config.tiny:
        blocks = (1, 1, 1, 1)
        spec = specs.imagenet_spec("densenet_blocks1111", blocks)
        # NOTE: private modules; the public applications APIs build only the 121, 169 and 201 layouts.
        from keras.src.applications import densenet as keras_densenet_applications
        from tf_keras.src.applications import densenet as tf_keras_densenet_applications

        def tf_keras_builder(shape):
            return tf_keras_densenet_applications.DenseNet(list(blocks), weights=None, input_shape=shape)

        def keras_builder(shape):
            return keras_densenet_applications.DenseNet(list(blocks), weights=None, input_shape=shape)

        return "DenseNet-BC, blocks (1, 1, 1, 1)", spec, tf_keras_builder, keras_builder, keras, tf_keras

    def tf_keras_builder(shape):
        return tf_keras.applications.DenseNet121(weights=None, input_shape=shape)

    def keras_builder(shape):
        return keras.applications.DenseNet121(weights=None, input_shape=shape)

    return "DenseNet-121", keras_densenet.get_spec("densenet121"), tf_keras_builder, keras_builder, keras, tf_keras


def measure_imagenet_throughput(config):
    import keras_densenet
    import throughput

    model_name, spec, tf_keras_builder, keras_builder, keras, tf_keras = _imagenet_builders(config)
    shape = (config.imagenet_image_size, config.imagenet_image_size, 3)
    candidates = [
        throughput.Candidate(OURS, lambda: keras_densenet.DenseNet(spec, input_shape=shape), tf_keras),
        throughput.Candidate(TF_KERAS_APPLICATIONS, lambda: tf_keras_builder(shape), tf_keras),
        throughput.Candidate(KERAS_APPLICATIONS, lambda: keras_builder(shape), keras),
    ]
    models = throughput.measure_throughput(
        candidates, config.imagenet_batch_size, config.imagenet_image_size, 1000,
        config.warmup_steps, config.steps, config.rounds,
    )
    ratios = {
        f"{OURS} / {TF_KERAS_APPLICATIONS}": throughput.ratio(models, OURS, TF_KERAS_APPLICATIONS),
        f"{OURS} / {KERAS_APPLICATIONS}": throughput.ratio(models, OURS, KERAS_APPLICATIONS),
    }
    return {
        "model": model_name,
        "batch_size": config.imagenet_batch_size,
        "image_size": config.imagenet_image_size,
        "models": models,
        "model_order": list(models),
        "ratios": ratios,
        "ratio_order": list(ratios),
    }


def measure_cifar_throughput(config):
    import tf_keras

    import keras_densenet
    import naive
    import throughput

    variant = config.cifar_variant
    shape = (config.cifar_image_size, config.cifar_image_size, 3)
    candidates = []
    for jit_compile in (False, True):
        suffix = XLA if jit_compile else ""
        candidates.append(throughput.Candidate(
            OURS + suffix, lambda: keras_densenet.DenseNet(variant, input_shape=shape, classes=10), tf_keras, jit_compile
        ))
        candidates.append(throughput.Candidate(
            NAIVE + suffix, lambda: naive.naive_densenet(variant, shape, 10), tf_keras, jit_compile
        ))
    models = throughput.measure_throughput(
        candidates, config.cifar_batch_size, config.cifar_image_size, 10,
        config.warmup_steps, config.steps, config.rounds,
    )
    ratios = {
        f"{OURS} / {NAIVE}": throughput.ratio(models, OURS, NAIVE),
        f"{OURS}{XLA} / {NAIVE}{XLA}": throughput.ratio(models, OURS + XLA, NAIVE + XLA),
        f"{OURS}{XLA} / {OURS}": throughput.ratio(models, OURS + XLA, OURS),
        f"{OURS}{XLA} / {NAIVE}": throughput.ratio(models, OURS + XLA, NAIVE),
    }
    return {
        "model": f"`{variant}`",
        "batch_size": config.cifar_batch_size,
        "image_size": config.cifar_image_size,
        "models": models,
        "model_order": list(models),
        "ratios": ratios,
        "ratio_order": list(ratios),
    }


def _run_memory_subprocess(config, variant, mode):
    import json

    command = [
        sys.executable, MEMORY_SCRIPT, f"--mode={mode}", f"--variant={variant}",
        f"--batch_size={config.memory_batch_size}", f"--image_size={config.memory_image_size}",
        f"--steps={config.memory_steps}", "--warmup_steps=1",
    ]
    logging.info("Running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = " ".join(result.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"benchmarks/memory.py failed with exit status {result.returncode}: {tail}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_memory(config):
    import keras_densenet

    rows = []
    for variant in config.memory_variants:
        spec = keras_densenet.get_spec(variant)
        standard = _run_memory_subprocess(config, variant, "standard")
        efficient = _run_memory_subprocess(config, variant, "memory_efficient")
        rows.append({
            "variant": variant,
            "depth": spec.depth,
            "growth_rate": spec.growth_rate,
            "standard": standard,
            "memory_efficient": efficient,
            # A tiny model's step can fit in memory the allocator already holds, so its peak can be 0.
            "step_peak_reduction": (
                1.0 - efficient["step_peak_mib"] / standard["step_peak_mib"] if standard["step_peak_mib"] > 0 else None
            ),
        })
    rows.sort(key=lambda row: row["depth"])
    return {"batch_size": config.memory_batch_size, "image_size": config.memory_image_size, "rows": rows}


def measure_litert(config, work_dir):
    import numpy as np

    import keras_densenet
    import latency

    model_name, spec, _, keras_builder, _, _ = _imagenet_builders(config)
    shape = (config.latency_image_size, config.latency_image_size, 3)
    ours = latency.export_ours(keras_densenet.DenseNet(spec, input_shape=shape), work_dir)

    rng = np.random.default_rng(0)
    calibration = rng.normal(0.0, 1.0, (config.calibration_images, *shape)).astype("float32")
    applications = latency.export_applications_ptq_int8(
        keras_builder(shape), os.path.join(work_dir, "keras_applications_int8_ptq.tflite"), calibration
    )
    exported = dict(zip(LATENCY_FORMATS, (ours["float32"], ours["float16"], ours["int8_qat"], applications)))

    paths = {label: result["path"] for label, result in exported.items()}
    formats = {label: {"file_bytes": result["file_bytes"], "latency": {}} for label, result in exported.items()}
    for count in config.threads:
        logging.info("Timing LiteRT with %d threads", count)
        timings = latency.measure_latencies(
            paths, count, config.latency_warmup_runs, config.latency_runs, config.latency_rounds
        )
        for label, timing in timings.items():
            formats[label]["latency"][str(count)] = timing

    def median(label, count):
        return formats[label]["latency"][str(count)]["median_ms"]

    first = config.threads[0]
    qat_over_float32 = median("ours int8 (QAT)", first) / median("ours float32", first)
    qat_over_applications = median("ours int8 (QAT)", first) / median("keras.applications int8 (PTQ)", first)
    targets = {
        "threads": first,
        "qat_over_float32": qat_over_float32,
        "qat_over_float32_met": qat_over_float32 <= QAT_LATENCY_TARGET,
        "qat_over_applications": qat_over_applications,
        "qat_over_applications_met": qat_over_applications <= 1.0,
    }
    litert = {
        "model": model_name,
        "image_size": config.latency_image_size,
        "threads": list(config.threads),
        "warmup_runs": config.latency_warmup_runs,
        "runs": config.latency_runs,
        "rounds": config.latency_rounds,
        "calibration_images": config.calibration_images,
        "formats": formats,
        "format_order": list(formats),
        "targets": targets,
    }
    export_time = {
        "float32_convert_seconds": ours["float32"]["convert_seconds"],
        "float16_convert_seconds": ours["float16"]["convert_seconds"],
        "qat_convert_seconds": ours["int8_qat"]["convert_seconds"],
        "quantize_model_seconds": ours["int8_qat"]["quantize_model_seconds"],
        "applications_int8_convert_seconds": applications["convert_seconds"],
    }
    return litert, export_time


def measure_pipeline(config):
    """Run `densenet-pipeline` in a subprocess in a new temporary folder and return its wall time."""
    with tempfile.TemporaryDirectory(prefix="densenet-pipeline-") as output_dir:
        command = [sys.executable, "-m", "keras_densenet.cli.pipeline", f"--output_dir={output_dir}",
                   *config.pipeline_flags]
        logging.info("Running %s", " ".join(command))
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wall_seconds = time.perf_counter() - start
    if result.returncode != 0:
        tail = " ".join(result.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"densenet-pipeline failed with exit status {result.returncode}: {tail}")
    displayed_command = " ".join(["densenet-pipeline", "--output_dir=TEMPORARY_FOLDER", *config.pipeline_flags])
    return {"command": displayed_command, "wall_seconds": wall_seconds}


def _environment():
    from importlib import metadata

    from keras_densenet.utils import report

    machine = report.environment()
    machine["packages"]["keras"] = metadata.version("keras")
    return machine


def run(config):
    """Run every benchmark of `config` and write the JSON file, the plots and the Markdown sections.

    Args:
        config: A `BenchmarkConfig`.

    Returns:
        The results dict that is written to `results.json`.

    Raises:
        ValueError: on an invalid size, thread count or variant in `config`, or run.py markers
            out of order in the Markdown file.
        RuntimeError: if a memory subprocess or the main job fails.
    """
    if BENCHMARKS_DIR not in sys.path:
        sys.path.insert(0, BENCHMARKS_DIR)  # naive, throughput, latency and tables live beside this file.
    from keras_densenet.utils import files

    _check_config(config)
    command = config.command or "python benchmarks/run.py"
    results = {
        "command": command,
        "settings": {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(config).items()
            if key not in ("output_dir", "markdown_path", "command")
        },
        "machine": _environment(),
        "load_average": {"start": list(os.getloadavg())},
    }
    started = time.perf_counter()

    logging.info("Measuring memory against depth")
    results["memory"] = measure_memory(config)
    logging.info("Measuring training throughput")
    results["throughput"] = {"imagenet": measure_imagenet_throughput(config), "cifar": measure_cifar_throughput(config)}
    logging.info("Exporting and timing LiteRT models")
    with tempfile.TemporaryDirectory(prefix="densenet-bench-") as work_dir:
        results["litert"], results["export_time"] = measure_litert(config, work_dir)
    if config.skip_pipeline:
        results["export_time"]["pipeline"] = None
    else:
        logging.info("Running the main job")
        results["export_time"]["pipeline"] = measure_pipeline(config)

    results["load_average"]["end"] = list(os.getloadavg())
    results["total_seconds"] = time.perf_counter() - started

    # Written before rendering as well, so a rendering error does not lose the measurements.
    files.write_json_atomic(os.path.join(config.output_dir, "results.json"), results)
    write_outputs(results, config.output_dir, config.markdown_path)
    logging.info("Wrote %s and %s in %.0f s", os.path.join(config.output_dir, "results.json"),
                 config.markdown_path, results["total_seconds"])
    return results


def write_outputs(results, output_dir, markdown_path):
    """Write the PNG plots and `results.json` into `output_dir` and replace the run.py sections of `markdown_path`.

    Args:
        results: The dict that `run` measured, or one read back from its `results.json`.
        output_dir: Folder of `results.json` and the plots.
        markdown_path: Markdown file whose run.py sections are replaced (or appended).
    """
    if BENCHMARKS_DIR not in sys.path:
        sys.path.insert(0, BENCHMARKS_DIR)
    import tables

    from keras_densenet.utils import files

    markdown_dir = os.path.dirname(os.path.abspath(markdown_path))
    plots = {"throughput": "throughput.png", "memory": "memory_depth.png", "latency": "litert_latency.png"}
    results["plots"] = {key: os.path.relpath(os.path.join(output_dir, name), markdown_dir) for key, name in plots.items()}
    tables.plot_throughput(os.path.join(output_dir, plots["throughput"]), results)
    tables.plot_memory(os.path.join(output_dir, plots["memory"]), results)
    tables.plot_latency(os.path.join(output_dir, plots["latency"]), results)
    files.write_json_atomic(os.path.join(output_dir, "results.json"), results)

    document = ""
    if os.path.exists(markdown_path):
        with open(markdown_path, encoding="utf-8") as handle:
            document = handle.read()
    files.write_text_atomic(markdown_path, tables.replace_section(document, tables.render_section(results)))


def rewrite_outputs(output_dir, markdown_path):
    """Render the plots and Markdown sections again from `{output_dir}/results.json`, measuring nothing.

    Raises:
        ValueError: if `{output_dir}/results.json` is missing or not a results file of `run`.
    """
    import json

    path = os.path.join(output_dir, "results.json")
    try:
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(
            f"`output_dir` has no readable results.json ({error}); run benchmarks/run.py without "
            f"--render_only first. Received: output_dir={output_dir!r}"
        ) from error
    missing = [key for key in ("throughput", "memory", "litert", "export_time", "machine") if key not in results]
    if missing:
        raise ValueError(
            f"`output_dir` has a results.json without {', '.join(missing)}; run benchmarks/run.py without "
            f"--render_only to measure again. Received: output_dir={output_dir!r}"
        )
    write_outputs(results, output_dir, markdown_path)
    return results
