"""benchmarks/benchmark_sit.py on tiny models: the trainer's latent path (VAE decode for the reward, the VAE
saved with the output) at the layout of SiT-XL/2 + sd-vae-ft-ema + DINOv2, and the benchmark's own report."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tiny_benchmark_reports_both_operators():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "benchmarks/benchmark_sit.py", "--tiny", "--steps", "3"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for operator in ("dmd", "amd"):
        assert re.search(rf"^{operator}: [\d.]+ s with a student update, [\d.]+ s fake update only$", result.stdout, re.M), result.stdout
    assert "one frozen base with two adapters" in result.stdout
