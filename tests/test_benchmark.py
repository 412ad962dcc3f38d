"""The benchmarks on tiny models, on CPU: benchmarks/benchmark_step.py (the same build-and-run path as its
full-size GPU run; for SiT also the trainer's latent path: VAE decode for the reward, the VAE saved with the
output; its memory budgets) and benchmarks/gpu_acceptance.py, whose table must come out whole."""

import re
import subprocess
import sys

import pytest
from launch import ENV, REPO


@pytest.mark.slow
@pytest.mark.parametrize("model, operators", [("sit", ["dmd", "amd"])])  # SDXL and Wan: in the acceptance test
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


@pytest.mark.slow  # peft injects both adapters into the 14B on the meta device: 10 s
def test_wan_memory_budgets_from_parameter_counts():
    # Both published sizes, on the meta device: the README's budget table.
    sys.path.insert(0, f"{REPO}/benchmarks")
    from benchmark_step import memory_budget

    assert [round(count / 1e6, 1) for count in memory_budget("wan", "full", 64)[:2]] == [1419.0, 175.0]
    assert [round(count / 1e6, 1) for count in memory_budget("wan", "full-14b", 64)[:2]] == [14288.5, 613.4]


@pytest.mark.slow
def test_gpu_acceptance_prints_its_table_on_tiny_models():
    command = [sys.executable, "benchmarks/gpu_acceptance.py", "--device", "cpu", "--steps", "3"]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for run, batch in [
        ("SDXL dmd", 4),
        ("SDXL amd", 4),
        ("SDXL dmd", 8),
        ("SDXL amd", 8),
        ("Wan2.1-1.3B amd", 4),
        ("Wan2.1-1.3B streaming amd", 4),
    ]:
        row = rf"^\| {run} \| {batch} \| [\d.]+ s \| [\d.]+ s \| - \(CPU\) \| [\d.]+ GiB \| - \|$"
        assert re.search(row, result.stdout, re.M), result.stdout
    # fp32 on CPU: the checkpointed backward recomputes exactly what the plain one kept
    assert re.search(r"relative difference 0\.00e\+00 \(ok\)", result.stdout), result.stdout
