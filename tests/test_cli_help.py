"""Tests that every console script lists its own flags under --helpshort."""

import shutil
import subprocess

import pytest

SCRIPT_FLAGS = {
    "densenet-train": "--model_dir",
    "densenet-evaluate": "--model_dir",
    "densenet-export": "--formats",
    "densenet-pipeline": "--qat_epochs",
    "densenet-info": "--input_size",
}


@pytest.mark.parametrize("script, flag", sorted(SCRIPT_FLAGS.items()))
def test_helpshort_lists_script_flags(script, flag):
    path = shutil.which(script)
    assert path, f"{script} is not on PATH; install the package with pip install -e ."
    result = subprocess.run([path, "--helpshort"], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert f"  {flag}" in output, output[-2000:]
    assert f"{script}:" in output.splitlines()[0], output[:500]
