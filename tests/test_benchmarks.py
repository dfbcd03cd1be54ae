"""Smoke test of benchmarks/run.py at a tiny size, and tests of its pieces that need no timing."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

REPOSITORY_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_DIR = os.path.join(REPOSITORY_DIR, "benchmarks")
sys.path.insert(0, BENCHMARKS_DIR)

import naive  # noqa: E402
import suite as benchmark_run  # noqa: E402
import tables  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OTHER_SECTION = "# Benchmarks\n\n## Memory-efficient dense layers\n\nAn earlier section that must stay.\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Run the script with --tiny in a subprocess and return (output folder, results, Markdown)."""
    output_dir = tmp_path_factory.mktemp("bench")
    markdown_path = output_dir / "BENCHMARKS.md"
    markdown_path.write_text(OTHER_SECTION)
    command = [
        sys.executable, os.path.join(BENCHMARKS_DIR, "run.py"), "--tiny", "--skip_pipeline",
        f"--output_dir={output_dir}", f"--markdown={markdown_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPOSITORY_DIR)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((output_dir / "results.json").read_text())
    return output_dir, results, markdown_path.read_text()


@pytest.mark.slow
def test_tiny_run_writes_plots(tiny_run):
    output_dir, _, _ = tiny_run
    for name in ("throughput.png", "memory_depth.png", "litert_latency.png"):
        with open(output_dir / name, "rb") as handle:
            assert handle.read(8) == PNG_SIGNATURE, name


@pytest.mark.slow
def test_tiny_run_throughput_values(tiny_run):
    _, results, _ = tiny_run
    imagenet = results["throughput"]["imagenet"]
    assert set(imagenet["models"]) == {
        benchmark_run.OURS, benchmark_run.TF_KERAS_APPLICATIONS, benchmark_run.KERAS_APPLICATIONS
    }
    for group in results["throughput"].values():
        for label, model in group["models"].items():
            assert model["images_per_second"] > 0, label
            assert len(model["step_seconds"]) == 2, label
            median_step = sorted(model["step_seconds"])[0] / 2 + sorted(model["step_seconds"])[1] / 2
            assert model["images_per_second"] == pytest.approx(group["batch_size"] / median_step), label
        for name, value in group["ratios"].items():
            numerator, denominator = name.split(" / ")
            expected = group["models"][numerator]["images_per_second"] / group["models"][denominator]["images_per_second"]
            assert value == pytest.approx(expected), name
    # The same architecture in three builders has the same number of weights.
    parameters = {model["parameters"] for model in imagenet["models"].values()}
    assert len(parameters) == 1
    cifar = results["throughput"]["cifar"]
    assert cifar["models"][benchmark_run.OURS]["parameters"] == cifar["models"][benchmark_run.NAIVE]["parameters"]
    assert cifar["models"][benchmark_run.OURS + benchmark_run.XLA]["jit_compile"] is True


@pytest.mark.slow
def test_tiny_run_memory_values(tiny_run):
    _, results, _ = tiny_run
    rows = results["memory"]["rows"]
    assert [row["variant"] for row in rows] == ["densenet_bc22_k8"]
    row = rows[0]
    assert row["depth"] == 22
    assert row["standard"]["memory_efficient"] is False
    assert row["memory_efficient"]["memory_efficient"] is True
    for key in ("standard", "memory_efficient"):
        assert row[key]["step_seconds"] > 0
        assert row[key]["process_peak_rss_mib"] > 0


@pytest.mark.slow
def test_tiny_run_litert_values(tiny_run):
    _, results, _ = tiny_run
    litert = results["litert"]
    assert set(litert["formats"]) == set(benchmark_run.LATENCY_FORMATS)
    sizes = {label: result["file_bytes"] for label, result in litert["formats"].items()}
    # float16 halves and int8 quarters the float32 weights; the graph adds a little to each file.
    assert sizes["ours float16"] < 0.6 * sizes["ours float32"]
    assert sizes["ours int8 (QAT)"] < 0.4 * sizes["ours float32"]
    for result in litert["formats"].values():
        assert set(result["latency"]) == {"1", "2"}
        for timing in result["latency"].values():
            assert 0 < timing["min_ms"] <= timing["median_ms"]
    targets = litert["targets"]
    formats = litert["formats"]
    expected = formats["ours int8 (QAT)"]["latency"]["1"]["median_ms"] / formats["ours float32"]["latency"]["1"]["median_ms"]
    assert targets["qat_over_float32"] == pytest.approx(expected)
    assert targets["qat_over_float32_met"] == (expected <= benchmark_run.QAT_LATENCY_TARGET)
    assert results["export_time"]["qat_convert_seconds"] > 0
    assert results["export_time"]["pipeline"] is None


@pytest.mark.slow
def test_tiny_run_markdown(tiny_run):
    _, results, markdown = tiny_run
    assert markdown.startswith(OTHER_SECTION.rstrip("\n"))
    for heading in ("## Training throughput", "## Memory against depth", "## LiteRT latency and size", "## Export time"):
        assert heading in markdown
    assert results["machine"]["processor"] in markdown
    assert results["command"] in markdown
    assert "--tiny" in results["command"]
    ratio = results["throughput"]["imagenet"]["ratios"][f"{benchmark_run.OURS} / {benchmark_run.TF_KERAS_APPLICATIONS}"]
    assert f"{ratio:.3f}" in markdown
    assert "(throughput.png)" in markdown


def test_replace_section_appends_then_replaces():
    once = tables.replace_section(OTHER_SECTION, "## New\n\nfirst")
    assert once.startswith(OTHER_SECTION)
    assert "first" in once
    twice = tables.replace_section(once, "## New\n\nsecond")
    assert "first" not in twice
    assert "second" in twice
    assert twice.count(tables.SECTION_BEGIN) == 1
    assert twice.startswith(OTHER_SECTION)


def test_replace_section_rejects_one_marker():
    with pytest.raises(ValueError, match=r"both run.py markers.*Received: begin marker at -1"):
        tables.replace_section(OTHER_SECTION + tables.SECTION_END, "## New")


def test_naive_builder_matches_parameter_count():
    import keras_densenet

    ours = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(16, 16, 3), classes=10)
    reference = naive.naive_densenet("densenet_bc22_k8", (16, 16, 3), 10)
    assert reference.count_params() == ours.count_params()
    assert len(reference.trainable_weights) == len(ours.trainable_weights)
    assert any(layer.__class__.__name__ == "Lambda" for layer in reference.layers)


def test_naive_builder_rejects_plain_densenet():
    with pytest.raises(ValueError, match=r"DenseNet-BC variant.*Received: variant='densenet40_k12'"):
        naive.naive_densenet("densenet40_k12", (32, 32, 3), 10)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("steps", 0, r"`steps` must be a positive integer. Received: steps=0"),
        ("threads", (), r"`threads` must be a non-empty tuple.*Received: threads=\(\)"),
        ("memory_variants", ("densenet_bc999",), r"Received: variant='densenet_bc999'"),
        ("cifar_variant", "densenet40_k12", r"`cifar_variant` must be a DenseNet-BC variant.*Received"),
        ("imagenet_image_size", 16, r"`imagenet_image_size` must be at least 32.*Received: imagenet_image_size=16"),
        ("latency_warmup_runs", -1, r"Received: latency_warmup_runs=-1"),
    ],
)
def test_run_rejects_bad_config(tmp_path, field, value, message):
    config = dataclasses.replace(
        benchmark_run.tiny_config(str(tmp_path), str(tmp_path / "BENCHMARKS.md")), **{field: value}
    )
    with pytest.raises(ValueError, match=message):
        benchmark_run.run(config)
    assert not os.path.exists(tmp_path / "results.json")


def test_pipeline_failure_raises(tmp_path):
    config = dataclasses.replace(
        benchmark_run.tiny_config(str(tmp_path), str(tmp_path / "BENCHMARKS.md")), pipeline_flags=("--epochs=0",)
    )
    with pytest.raises(RuntimeError, match=r"densenet-pipeline failed with exit status"):
        benchmark_run.measure_pipeline(config)


def test_script_rejects_bad_threads_flag(tmp_path):
    command = [sys.executable, os.path.join(BENCHMARKS_DIR, "run.py"), "--threads=0,x", f"--output_dir={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "--threads must be a comma-separated list of positive integers" in result.stderr


@pytest.mark.slow
def test_render_only_rewrites_from_results(tiny_run, tmp_path):
    output_dir, results, markdown = tiny_run
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text((output_dir / "results.json").read_text())
    markdown_path = copy / "BENCHMARKS.md"
    markdown_path.write_text(OTHER_SECTION)

    command = [
        sys.executable, os.path.join(BENCHMARKS_DIR, "run.py"), "--render_only",
        f"--output_dir={copy}", f"--markdown={markdown_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPOSITORY_DIR)

    assert result.returncode == 0, result.stderr[-3000:]
    # The same measurements give the same section, and the plots are drawn again.
    assert markdown_path.read_text() == markdown
    for name in ("throughput.png", "memory_depth.png", "litert_latency.png"):
        assert (copy / name).read_bytes().startswith(PNG_SIGNATURE)


def test_render_only_rejects_missing_results(tmp_path):
    command = [sys.executable, os.path.join(BENCHMARKS_DIR, "run.py"), "--render_only", f"--output_dir={tmp_path}",
               f"--markdown={tmp_path / 'BENCHMARKS.md'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("Error: `output_dir` has no readable results.json"), last_line
    assert str(tmp_path) in last_line
    assert os.listdir(tmp_path) == []
