"""The densenet-info command and the size and cost summary behind it."""

import json
import subprocess
import sys

import pytest

import keras_densenet
from keras_densenet.cli import info


def test_densenet121_summary():
    row = keras_densenet.summarize("densenet121")
    assert row["total_params"] == 8_062_504
    assert row["trainable_params"] == 7_978_856
    assert row["depth"] == 121
    # About 2.87 G multiply-accumulates, the usual figure for DenseNet-121 at 224x224.
    assert 2.8e9 < row["macs"] < 2.95e9
    assert [stage["shape"] for stage in row["stages"]] == [[56, 56, 256], [28, 28, 512], [14, 14, 1024], [7, 7, 1024]]
    assert [stage["stride"] for stage in row["stages"]] == [4, 8, 16, 32]


def test_macs_counted_by_hand():
    row = keras_densenet.summarize("densenet_bc22_k8", input_size=8, channels=1, classes=10)
    # Stem 3x3x1x16, then per dense layer 1x1 (c -> 32) and 3x3 (32 -> 8), transitions at half size.
    expected = 64 * 9 * 16
    channels, side = 16, 8
    for block in range(3):
        for _ in range(3):
            expected += side * side * (channels * 32 + 9 * 32 * 8)
            channels += 8
        if block < 2:
            expected += side * side * channels * (channels // 2)
            channels //= 2
            side //= 2
    expected += channels * 10
    assert row["macs"] == expected


def test_run_non_square_input():
    (row,) = info.run(["densenet121"], input_size=(200, 160), include_top=False)
    assert row["input_shape"] == [200, 160, 3]
    assert row["stages"][-1]["shape"] == [6, 5, 1024]


def test_table_lists_every_row():
    rows = info.run(["densenet_bc22_k8", "densenet40_k12"], input_size=(32, 32))
    lines = info.format_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("densenet_bc22_k8")


@pytest.mark.parametrize("text, expected", [("224", (224, 224)), ("200x160", (200, 160)), (None, None)])
def test_parse_input_size(text, expected):
    assert info.parse_input_size(text) == expected


@pytest.mark.parametrize("text", ["0", "200x", "a", "1x2x3"])
def test_parse_input_size_rejects(text):
    with pytest.raises(ValueError, match=rf"`input_size` must be one positive integer or HEIGHTxWIDTH.*Received: input_size='{text}'"):
        info.parse_input_size(text)


def test_command_prints_json():
    result = subprocess.run(
        [sys.executable, "-m", "keras_densenet.cli.info", "--variant=densenet_bc22_k8", "--input_size=16", "--format=json"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    (row,) = json.loads(result.stdout)
    assert row["variant"] == "densenet_bc22_k8"
    assert row["input_shape"] == [16, 16, 3]


def test_command_rejects_small_input():
    result = subprocess.run(
        [sys.executable, "-m", "keras_densenet.cli.info", "--variant=densenet121", "--input_size=16"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "Error: `input_shape` is too small for densenet121" in result.stderr
