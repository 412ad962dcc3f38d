"""examples/reproducible.py: the CPU kernels are pinned where the CPU runs AVX2, and only there."""

import os

import pytest
import torch

from examples import reproducible


@pytest.fixture
def execs(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((argv, env)))
    for name in reproducible.PINNED_CPU_ARITHMETIC:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.argv", ["demo.py", "--seeds", "0"])
    return calls


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
def test_an_avx2_cpu_starts_again_with_the_kernels_pinned(execs, monkeypatch, capability):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")  # set by hand: kept
    reproducible.pin_cpu_arithmetic("examples.digits.demo")
    ((argv, env),) = execs
    assert argv[1:] == ["-m", "examples.digits.demo", "--seeds", "0"]
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["MKL_CBWR"] == "COMPATIBLE"


@pytest.mark.parametrize("capability", ["DEFAULT", "AVX", "SVE256"])
def test_a_cpu_without_avx2_runs_on_unpinned(execs, monkeypatch, capability):
    # torch would take ATEN_CPU_CAPABILITY=avx2 on trust and stop at the first AVX2 instruction.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    reproducible.pin_cpu_arithmetic("examples.digits.demo")
    assert execs == []
