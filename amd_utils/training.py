"""Training plumbing the trainers share: the flags that mean the same thing in every trainer, the two
adapters' optimizers, adapter-only checkpoints, resuming, and the closing step-time report.

What is particular to a model family (its networks, noising, sampling and outputs) stays in its trainer.
"""

import logging
import math
import os
import shutil
import statistics

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file

from .lora import ADAPTERS, FAKE, STUDENT, load_lora_state_dict, lora_state_dict
from .objective import OPERATORS

REPORT_TO = ("tensorboard", "wandb", "all", "none")


def add_amd_arguments(parser):
    group = parser.add_argument_group("AMD")
    group.add_argument("--operator", default="amd", choices=OPERATORS, help="dmd (Eq. 7), naive (Eq. 8) or amd (Eq. 10).")
    group.add_argument("--sensitivity", type=float, default=0.5, help="s of Eq. 13.")
    group.add_argument("--sharpen", dest="sharpen", action="store_true", default=True, help="Repulsive landscape sharpening, W(a) = exp(-a) (Eq. 14; default).")
    group.add_argument("--no_sharpen", dest="sharpen", action="store_false", help="Plain fake-teacher loss (W = 1).")
    group.add_argument("--group_size", type=int, default=4, help="K samples per prompt or class label (Eq. 12).")
    group.add_argument("--fake_update_ratio", type=int, default=5, help="The student is updated every N-th step (DMD2: 5).")


def add_optimization_arguments(parser):
    group = parser.add_argument_group("optimization")
    group.add_argument("--train_batch_size", type=int, default=32, help="Samples per device and step: a multiple of --group_size.")
    group.add_argument("--max_train_steps", type=int, default=2000, help="Steps; each updates the fake teacher.")
    group.add_argument("--learning_rate", type=float, default=1e-4, help="Student adapter learning rate.")
    group.add_argument("--fake_learning_rate", type=float, default=None, help="Fake adapter learning rate (default: --learning_rate).")
    group.add_argument("--lr_scheduler", default="constant", help="diffusers' get_scheduler name.")
    group.add_argument("--lr_warmup_steps", type=int, default=0)
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_weight_decay", type=float, default=0.0)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--max_grad_norm", type=float, default=1.0)
    group.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' 8-bit AdamW.")
    group.add_argument("--lora_rank", type=int, default=32)
    group.add_argument("--lora_alpha", type=int, default=None, help="Default: --lora_rank.")
    group.add_argument("--mixed_precision", default=None, choices=["no", "bf16"], help="fp16 is not offered: its loss scaler would be shared by two optimizers.")
    group.add_argument("--gradient_checkpointing", action="store_true")
    group.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere or newer GPUs: an fp32 reward model runs ~3x faster.")
    group.add_argument("--seed", type=int, default=0)


def add_output_arguments(parser):
    group = parser.add_argument_group("outputs, logging, checkpoints")
    group.add_argument("--output_dir", default=None, help="Each trainer sets its own default.")
    group.add_argument("--logging_dir", default="logs", help="Under --output_dir.")
    group.add_argument("--report_to", default="tensorboard", choices=REPORT_TO)
    group.add_argument("--validation_steps", type=int, default=200)
    group.add_argument("--checkpointing_steps", type=int, default=500)
    group.add_argument("--checkpoints_total_limit", type=int, default=None)
    group.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint-N folder or 'latest'.")
    group.add_argument("--push_to_hub", action="store_true")
    group.add_argument("--hub_model_id", default=None)
    group.add_argument("--hub_token", default=None)


def check_shared_args(args):
    """Reject bad values of the shared flags with one sentence, before anything is loaded or written."""
    if args.group_size < 2:
        raise ValueError(f"--group_size must be at least 2 to rank samples within a group, got {args.group_size}.")
    if args.train_batch_size % args.group_size != 0:
        raise ValueError(f"--train_batch_size {args.train_batch_size} is not a multiple of --group_size {args.group_size}: make it one.")
    for name in ("max_train_steps", "fake_update_ratio", "validation_steps", "checkpointing_steps", "lora_rank"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.sensitivity < 0:
        raise ValueError(f"--sensitivity must be >= 0, got {args.sensitivity}.")


def make_accelerator(args):
    """The ``Accelerator`` of a run, logging set up, each process seeded apart (its own prompts or labels
    and noise), TF32 on if asked; returns it with the dtype of the frozen weights."""
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)),
        # The student's backward leaves the fake adapter without grads and vice versa.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    set_seed(args.seed, device_specific=True)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    return accelerator, torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32


def make_optimizers(args, adapter_params, num_processes):
    """AdamW (or 8-bit AdamW) and a learning-rate schedule for each adapter: the fake adapter steps every
    step, the student every ``fake_update_ratio``-th."""
    if args.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes.") from None
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    optimizers, lr_schedulers = {}, {}
    for name, lr, num_updates in (
        (STUDENT, args.learning_rate, math.ceil(args.max_train_steps / args.fake_update_ratio)),
        (FAKE, args.fake_learning_rate or args.learning_rate, args.max_train_steps),
    ):
        optimizers[name] = optimizer_class(
            adapter_params[name], lr=lr, betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
        )  # fmt: skip
        # accelerate steps a prepared scheduler once per process at every optimizer step
        lr_schedulers[name] = get_scheduler(
            args.lr_scheduler, optimizers[name], num_warmup_steps=args.lr_warmup_steps * num_processes,
            num_training_steps=num_updates * num_processes,
        )  # fmt: skip
    return optimizers, lr_schedulers


def optimizer_step(accelerator, loss, params, optimizer, lr_scheduler, max_grad_norm):
    """Backward, clip, step and zero one adapter's optimizer; returns the gradient norm before clipping."""
    accelerator.backward(loss)
    grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm).item()
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def register_adapter_checkpoint_hooks(accelerator, model, save_extra=None):
    """Make ``accelerator.save_state`` / ``load_state`` hold the two adapters instead of the frozen base:
    ``<checkpoint>/student_lora.safetensors`` and ``fake_lora.safetensors``. ``save_extra(folder)`` adds a
    trainer's own files (e.g. the student in diffusers' LoRA format) to every checkpoint."""

    def save_model_hook(models, weights, output_dir):
        for _ in models:
            weights.pop()
        if accelerator.is_main_process:
            for name in ADAPTERS:
                save_file(lora_state_dict(model, name), os.path.join(output_dir, f"{name}_lora.safetensors"))
            if save_extra is not None:
                save_extra(output_dir)

    def load_model_hook(models, input_dir):
        models.clear()
        for name in ADAPTERS:
            load_lora_state_dict(model, name, load_file(os.path.join(input_dir, f"{name}_lora.safetensors")))

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def _checkpoints(output_dir):
    found = [d for d in os.listdir(output_dir) if d.startswith("checkpoint-")] if os.path.isdir(output_dir) else []
    return sorted(found, key=lambda d: int(d.split("-")[1]))


def resume(accelerator, args):
    """Load ``--resume_from_checkpoint`` (a folder, or 'latest' in ``--output_dir``) and return its step;
    0 when there is none."""
    if not args.resume_from_checkpoint:
        return 0
    if args.resume_from_checkpoint == "latest":
        found = _checkpoints(args.output_dir)
        path = os.path.join(args.output_dir, found[-1]) if found else None
    else:
        path = args.resume_from_checkpoint
    if path is None or not os.path.isdir(path):
        accelerator.print(f"No checkpoint {args.resume_from_checkpoint!r} found: starting a new run.")
        return 0
    accelerator.print(f"Resuming from {path}")
    accelerator.load_state(path)
    return int(os.path.basename(os.path.normpath(path)).split("-")[1])


def save_checkpoint(accelerator, args, global_step):
    """``<output_dir>/checkpoint-<step>``, dropping the oldest beyond ``--checkpoints_total_limit``."""
    if accelerator.is_main_process and args.checkpoints_total_limit is not None:
        found = _checkpoints(args.output_dir)
        for old in found[: max(0, len(found) - args.checkpoints_total_limit + 1)]:
            shutil.rmtree(os.path.join(args.output_dir, old))
    path = os.path.join(args.output_dir, f"checkpoint-{global_step}")
    accelerator.save_state(path)
    return path


def step_logs(fake_loss, rewards, advantages, lr_schedulers):
    """What every step logs besides the student's loss and the gradient norms."""
    return {
        "loss/fake": fake_loss.detach().item(),
        "reward/mean": rewards.mean().item(),
        "reward/std": rewards.std().item(),
        "advantage/negative_share": (advantages < 0).float().mean().item(),  # the detected "forbidden zone"
        "lr/student": lr_schedulers[STUDENT].get_last_lr()[0],
        "lr/fake": lr_schedulers[FAKE].get_last_lr()[0],
    }


def step_time_report(step_seconds, device):
    """'0.123 s with a student update, 0.045 s fake update only': medians of each kind of step after its
    first, which warms up (kept when it is the only one), plus peak memory on CUDA."""
    report = ", ".join(f"{statistics.median(seconds[1:] or seconds):.3f} s {kind}" for kind, seconds in step_seconds.items() if seconds)
    if device.type == "cuda":
        report += f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return report
