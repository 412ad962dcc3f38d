"""Running the trainers' real command lines from tests: ``accelerate launch`` on CPU, offline."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}


def launch(script, args, num_processes=1):
    """``accelerate launch <script> <args>``; asserts success and returns the completed process."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes), "--num_cpu_threads_per_process", "1"]
    env = dict(ENV)
    if num_processes > 1:  # accelerate's multi-process CPU mode: torchrun processes with gloo
        command.append("--multi_gpu")
        env["ACCELERATE_USE_CPU"] = "true"
    result = subprocess.run([*command, script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def with_flags(args, change):
    """``args`` with each flag of ``change`` set to its value (replaced if present, appended if not), or
    removed with its value when the value is None."""
    args = list(args)
    for flag, value in change.items():
        if flag in args:
            i = args.index(flag)
            args[i : i + 2] = [] if value is None else [flag, value]
        elif value is not None:
            args += [flag, value]
    return args


def assert_fails_with_one_sentence(script, args, message, output_dir):
    """The script exits non-zero, its last line is ``<script>: ...message...`` with no traceback, and the
    existing output folder (holding only keep.txt) is untouched."""
    result = subprocess.run([sys.executable, script, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert message in last_line and last_line.startswith(f"{script}: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert os.listdir(output_dir) == ["keep.txt"] and (output_dir / "keep.txt").read_text() == "earlier results"


def checkpoint_adapters(checkpoint):
    """The two adapters' weights saved in a ``checkpoint-N`` folder."""
    return {name: load_file(str(checkpoint / f"{name}_lora.safetensors")) for name in ("student", "fake")}


def assert_same_adapters(checkpoint_a, checkpoint_b):
    """Both checkpoints hold the same adapter weights, key for key (to float tolerance)."""
    a, b = checkpoint_adapters(checkpoint_a), checkpoint_adapters(checkpoint_b)
    for name in ("student", "fake"):
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            torch.testing.assert_close(a[name][key], b[name][key], atol=1e-6, rtol=1e-5)
