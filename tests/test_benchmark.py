"""benchmarks/benchmark_step.py on tiny models: the same build-and-run path as the full-size GPU benchmark.
For SiT it also covers the trainer's latent path (VAE decode for the reward, the VAE saved with the output)."""

import re
import subprocess
import sys

import pytest
from launch import ENV, REPO


@pytest.mark.slow
@pytest.mark.parametrize("model, operators", [("sit", ["dmd", "amd"]), ("sdxl", ["amd"]), ("wan", ["amd"])])
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
