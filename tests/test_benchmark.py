"""The benchmarks on tiny models, on CPU: benchmarks/benchmark_step.py (the same build-and-run path as its
full-size GPU run; for SiT also the trainer's latent path: VAE decode for the reward, the VAE saved with the
output) and benchmarks/gpu_acceptance.py, whose table must come out whole."""

import re
import subprocess
import sys

import pytest
from launch import ENV, REPO


@pytest.mark.slow
@pytest.mark.parametrize("model, operators", [("sit", ["dmd", "amd"]), ("wan", ["amd"])])
def test_tiny_benchmark_reports_step_times_and_memory(model, operators):
    command = [
        sys.executable,
        "benchmarks/benchmark_step.py",
        "--model",
        model,
        "--device",
        "cpu",
        "--steps",
        "3",
        "--operators",
        *operators,
    ]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for operator in operators:
        assert re.search(
            rf"^{operator}: [\d.]+ s with a student update, [\d.]+ s fake update only$", result.stdout, re.M
        ), result.stdout
    if len(operators) == 2:
        assert re.search(r"^amd / dmd step time: [\d.]+, [\d.]+$", result.stdout, re.M), result.stdout
    assert "one frozen base with two adapters" in result.stdout
    if model == "wan":  # the budgets of both published sizes, from parameter counts on the meta device
        assert "wan 1.3B: base network 1419.0 M parameters" in result.stdout
        assert "wan 14B: base network 14288.5 M parameters" in result.stdout


@pytest.mark.slow
def test_gpu_acceptance_prints_its_table_on_tiny_models():
    command = [sys.executable, "benchmarks/gpu_acceptance.py", "--device", "cpu", "--steps", "3"]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for run, batch in [("SDXL dmd", 4), ("SDXL amd", 4), ("SDXL dmd", 8), ("SDXL amd", 8), ("Wan2.1-1.3B amd", 4)]:
        row = rf"^\| {run} \| {batch} \| [\d.]+ s \| [\d.]+ s \| - \(CPU\) \| [\d.]+ GiB \| - \|$"
        assert re.search(row, result.stdout, re.M), result.stdout
    # fp32 on CPU: the checkpointed backward recomputes exactly what the plain one kept
    assert re.search(r"relative difference 0\.00e\+00 \(ok\)", result.stdout), result.stdout
