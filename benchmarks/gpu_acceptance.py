#!/usr/bin/env python
"""One command for the day a GPU is lent: the trainers at full size with random weights, measured beside the
fake-tensor estimates of benchmarks/estimate_memory.py, as one table.

    python benchmarks/gpu_acceptance.py                # one H100 or H200: about 8 minutes (not yet timed on one)
    python benchmarks/gpu_acceptance.py --device cpu   # the same runs on tiny models (CI keeps it working)

Rows (bf16, TF32, LoRA rank 64, K = 4, as benchmarks/benchmark_step.py runs them):
- SDXL at 1024 px with gradient checkpointing, reward-free DMD (``--reward none --operator dmd --no_sharpen``) and
  AMD with an HPSv2 ViT-H-14 reward, at batch 4 and 8: median step times with and without a student update and
  the peak GPU memory (``torch.cuda.max_memory_allocated``), beside the estimate;
- SDXL at batch 2: the student's gradient with ``--gradient_checkpointing`` against without. Adam with
  ``beta1 = 0`` and epsilon 1e3 moves a weight by ``lr * g / (|g| + 1e3)``, so the adapter's change over the
  second step (when the fake adapter differs from the student's) is its gradient; the row gives the relative
  difference of that change between the two runs (bf16 rounding: ~1e-2; recomputing through the wrong adapter,
  the bug fixed before: above 1);
- Wan2.1-T2V-1.3B at 480 x 832 x 81, batch 4, ``--microbatch_size 1``, gradient checkpointing, 8-bit Adam, UMT5 on
  the CPU: step times and peak memory beside the estimate; the same for the streaming trainer
  (``train_amd_wan_streaming.py``: blocks of 3 latent frames, window 12, sink 3, the student on the base).
The estimates run on the CPU in other processes while the GPU runs.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_step import CONFIGS, LORA_RANK, REPO, build, run_trainer  # noqa: E402

REPORT = re.compile(r"([\d.]+) s with a student update, ([\d.]+) s fake update only(?:; peak GPU memory ([\d.]+) GiB)?")
# The tiny video has 2 latent frames: blocks of 1, a window of 2 with 1 sink frame.
STREAMING_TINY = ["--num_frame_per_block", "1", "--local_attn_size", "2", "--sink_size", "1"]
GRADIENT_FLAGS = ["--max_train_steps", "2", "--fake_update_ratio", "1", "--checkpointing_steps", "1", "--adam_beta1",
                  "0", "--adam_epsilon", "1e3", "--adam_weight_decay", "0", "--learning_rate", "1"]  # fmt: skip


def start_estimate(model, size, batch, extra=()):
    """benchmarks/estimate_memory.py in another process (on the CPU), its output into a temporary file; returns
    both."""
    command = [sys.executable, os.path.join(REPO, "benchmarks", "estimate_memory.py"), "--model", model, "--size", size,
               "--train_batch_size", str(batch), *extra]  # fmt: skip
    output = tempfile.TemporaryFile(mode="w+")
    return subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, text=True), output


def estimated_gib(process, output):
    process.wait()
    output.seek(0)
    text = output.read()
    found = re.search(r"^peak ([\d.]+) GiB", text, re.M)
    if process.returncode != 0 or not found:
        raise SystemExit(f"an estimate failed:\n{text[-3000:]}")
    return float(found.group(1))


def student_change(folder):
    """The student adapter's change over the second step, one flat vector."""
    before, after = (
        load_file(os.path.join(folder, f"checkpoint-{step}", "student_lora.safetensors")) for step in (1, 2)
    )
    return torch.cat([(after[key] - before[key]).flatten() for key in sorted(after)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda", help="cpu: tiny models, no memory figures."
    )
    parser.add_argument("--steps", type=int, default=6, help="Steps of each timed run (student updates at 0 and 5).")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU: without one, run the tiny version with --device cpu.")
    size = "full" if args.device == "cuda" else "tiny"
    streaming = STREAMING_TINY if size == "tiny" else []
    estimates = {(model, batch): start_estimate(model, size, batch) for model, batch in (("sdxl", 4), ("sdxl", 8),
                                                                                        ("wan", 4))}  # fmt: skip
    estimates["wan_streaming", 4] = start_estimate("wan_streaming", size, 4, streaming)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        sdxl, wan = os.path.join(folder, "sdxl"), os.path.join(folder, "wan")
        flags = build("sdxl", CONFIGS["sdxl"][size], size, sdxl, args.device)
        for batch in (4, 8):
            for operator in ("dmd", "amd"):
                run = SimpleNamespace(steps=args.steps, train_batch_size=batch, group_size=4,
                                      lora_rank=LORA_RANK["sdxl"], device=args.device)  # fmt: skip
                report = run_trainer("sdxl", sdxl, flags, operator, run, name=f"{operator}-{batch}")
                rows.append((f"SDXL {operator}", batch, REPORT.search(report).groups(), ("sdxl", batch)))
        changes = []
        for checkpointing in (False, True):
            run = SimpleNamespace(steps=2, train_batch_size=2, group_size=2, lora_rank=LORA_RANK["sdxl"],
                                  device=args.device)  # fmt: skip
            plain = [flag for flag in flags if flag != "--gradient_checkpointing"]
            name = f"gradients-{checkpointing}"
            extra = [*GRADIENT_FLAGS, *(["--gradient_checkpointing"] if checkpointing else [])]
            run_trainer("sdxl", sdxl, plain, "dmd", run, name=name, extra=extra)
            changes.append(student_change(os.path.join(sdxl, f"out-{name}")))
        gradient_error = ((changes[1] - changes[0]).norm() / changes[0].norm()).item()
        flags = build("wan", CONFIGS["wan"][size], size, wan, args.device)
        run = SimpleNamespace(steps=2, train_batch_size=4, group_size=4, lora_rank=LORA_RANK["wan"], device=args.device)
        rows.append(
            ("Wan2.1-1.3B amd", 4, REPORT.search(run_trainer("wan", wan, flags, "amd", run)).groups(), ("wan", 4))
        )
        report = run_trainer("wan_streaming", wan, flags, "amd", run, name="streaming", extra=streaming)
        rows.append(("Wan2.1-1.3B streaming amd", 4, REPORT.search(report).groups(), ("wan_streaming", 4)))

    video = "x".join(map(str, CONFIGS["wan"][size]["video"]))
    print(f"\n{size} size on {args.device}; SDXL at {CONFIGS['sdxl'][size]['resolution']} px, Wan at {video}")
    columns = ["run", "batch", "step with a student update", "fake update only", "peak GPU memory", "estimate",
               "measured / estimate"]  # fmt: skip
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for name, batch, (student, fake, peak), key in rows:
        estimate = estimated_gib(*estimates[key])
        ratio = f"{float(peak) / estimate:.2f}" if peak else "-"
        memory = f"{peak} GiB" if peak else "- (CPU)"
        print(f"| {name} | {batch} | {student} s | {fake} s | {memory} | {estimate:.2f} GiB | {ratio} |")
    verdict = "ok" if gradient_error < 0.1 else "WRONG: the checkpointed backward is another gradient"
    print(f"| SDXL student gradient, --gradient_checkpointing vs without | 2 | relative difference {gradient_error:.2e}"
          f" ({verdict}) | | | | |")  # fmt: skip


if __name__ == "__main__":
    main()
