#!/usr/bin/env python
"""Step time and peak memory of ``train_amd_sit.py`` at full SiT-XL/2 size, with random weights (no download).

    python benchmarks/benchmark_sit.py                  # SiT-XL/2 + sd-vae-ft-ema + DINOv2-L reward, bf16, on CUDA
    python benchmarks/benchmark_sit.py --tiny           # the same path with tiny models, on CPU

Builds the three networks from their published configurations in a temporary folder, runs
``accelerate launch train_amd_sit.py`` for a few steps with each operator, and prints the median step times
and the peak GPU memory that the trainer reports, then the memory of this design (one frozen transformer with
two LoRA adapters) against DMD2's (a frozen teacher and two fully trained copies), from parameter counts.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler
from transformers import BitImageProcessor, Dinov2Config, Dinov2ForImageClassification

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from amd_utils.lora import add_student_and_fake_adapters  # noqa: E402
from amd_utils.sit import save_sit_pipeline  # noqa: E402
from train_amd_sit import LORA_TARGET_MODULES  # noqa: E402

# SiT-XL/2 at 256 px (the DiT-XL/2 network: 28 blocks of width 1152, 32x32x4 latents, learned sigma).
SIT_XL_2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_eps=1e-6)  # fmt: skip
SIT_TINY = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6)  # fmt: skip
# stabilityai/sd-vae-ft-ema
VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, scaling_factor=0.18215)  # fmt: skip
VAE_TINY = dict(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4, scaling_factor=0.18215)  # fmt: skip
# facebook/dinov2-large-imagenet1k-1-layer
DINOV2_L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=14, image_size=518, num_labels=1000)  # fmt: skip
DINOV2_TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, patch_size=2, image_size=16, num_labels=10)  # fmt: skip


def build_models(folder, tiny):
    """Random-weight SiT pipeline (with VAE) and DINOv2 classifier folders, as the trainer reads them."""
    transformer = DiTTransformer2DModel(**(SIT_TINY if tiny else SIT_XL_2))
    vae = AutoencoderKL(**(VAE_TINY if tiny else VAE))
    save_sit_pipeline(os.path.join(folder, "sit"), transformer, FlowMatchEulerDiscreteScheduler(), vae=vae)
    Dinov2ForImageClassification(Dinov2Config(**(DINOV2_TINY if tiny else DINOV2_L))).save_pretrained(os.path.join(folder, "reward"))
    size, crop = (16, 16) if tiny else (256, 224)
    BitImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": crop, "width": crop},
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(os.path.join(folder, "reward"))  # fmt: skip


def run_trainer(folder, operator, args):
    """One short run; returns the trainer's closing 'Median step time: ...' report."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--dynamo_backend", "no", os.path.join(REPO, "train_amd_sit.py"), "--mixed_precision", "no" if args.tiny else "bf16",
        "--pretrained_model_name_or_path", os.path.join(folder, "sit"), "--reward", "dinov2",
        "--reward_model_name_or_path", os.path.join(folder, "reward"), "--operator", operator,
        "--output_dir", os.path.join(folder, f"out-{operator}"), "--max_train_steps", str(args.steps),
        "--train_batch_size", str(args.train_batch_size), "--group_size", "4", "--lora_rank", str(args.lora_rank),
        "--validation_steps", str(args.steps + 1), "--checkpointing_steps", str(args.steps + 1), "--report_to", "none",
        "--allow_tf32",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    found = re.search(r"Median step time: (.*)", result.stdout + result.stderr)
    if result.returncode != 0 or not found:
        raise SystemExit(f"the {operator} run failed:\n{result.stderr[-3000:]}")
    return found.group(1).strip()


def memory_budget(tiny, lora_rank):
    """GiB of weights, gradients and Adam states: bf16 frozen weights (2 bytes a parameter); a trained
    parameter in fp32 with its gradient and two Adam moments (16 bytes)."""
    with torch.device("meta"):
        model = DiTTransformer2DModel(**(SIT_TINY if tiny else SIT_XL_2))
    base = sum(p.numel() for p in model.parameters())
    adapters = add_student_and_fake_adapters(model, LORA_TARGET_MODULES, lora_rank)
    lora = sum(p.numel() for params in adapters.values() for p in params)
    return base, lora, (2 * base + 16 * lora) / 2**30, (2 * base + 2 * 16 * base) / 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="Tiny models on CPU (checks the path, times nothing real).")
    parser.add_argument("--steps", type=int, default=20, help="Training steps per operator (the first ones warm up).")
    parser.add_argument("--train_batch_size", type=int, default=32)
    parser.add_argument("--lora_rank", type=int, default=32)
    parser.add_argument("--operators", nargs="+", default=["dmd", "amd"])
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("the full-size benchmark needs a CUDA GPU: run it with --tiny on CPU.")
    with tempfile.TemporaryDirectory() as folder:
        build_models(folder, args.tiny)
        for operator in args.operators:
            print(f"{operator}: {run_trainer(folder, operator, args)}", flush=True)
    base, lora, ours, dmd2 = memory_budget(args.tiny, args.lora_rank)
    print(f"base transformer {base / 1e6:.1f} M parameters, student + fake LoRA (rank {args.lora_rank}) {lora / 1e6:.1f} M")
    print(f"weights + gradients + Adam: one frozen base with two adapters {ours:.2f} GiB; DMD2's frozen teacher + two trained copies {dmd2:.2f} GiB")


if __name__ == "__main__":
    main()
