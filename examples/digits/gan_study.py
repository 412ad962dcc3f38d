"""The digits GAN study: what DMD2's GAN term does, with and without AMD's operator and sharpening.

DMD2 adds a GAN term on real images (its SDXL ablation: COCO FID 26.90 without, 19.32 with), and the paper trains
SDXL in DMD2's setting. The digits testbed has real images, so the term can be measured here. This study runs the
demo's two-stage protocol (same teacher, reward, judge, budget and flags; w = 1.5, s = 0.5) three ways per seed:

- without the GAN term: the dmd warm start, then `dmd` and `amd` with sharpening;
- for every pair of GAN weights (the generator's, the fake's): the warm start with the GAN term (DMD2 trains with it
  from the start), then `dmd` + GAN (DMD2) and `amd` + sharpening + GAN (the paper's SDXL setting).

The real images are the reward's half of the digits (``prepare.py``'s ``real_digits/``); FD compares with the
judge's half, which no run sees.

    python -m examples.digits.gan_study                            # DMD2's weights and 10x them, 3 seeds
    python -m examples.digits.gan_study --gan_weights 5e-3,1e-2 --seeds 0

Writes ``<output_dir>/results.md`` (mean ± std over seeds, then one row per run) and ``results.json``, as the demo,
and ``discriminator.md``: how well each GAN warm start's discriminator (first seed) tells real digits from its
student's samples, at several noise levels.
"""

import argparse
import os
import time

import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import load_file

from amd_utils.lora import FAKE, add_student_and_fake_adapters, load_lora_state_dict
from amd_utils.parameterization import sit_add_noise
from amd_utils.pipeline_sit import use_sit_time_embedding
from amd_utils.training import HEAD_FILE
from examples.reproducible import pin_cpu_arithmetic
from train_amd_sit import LORA_TARGET_MODULES, discriminator_head, fake_forward

from .demo import (
    EVALUATION_SEED,
    LORA_RANK,
    add_budget_arguments,
    check_budget_arguments,
    load_pipeline,
    plan_runs,
    train_and_evaluate,
)
from .evaluate import sample_per_class
from .prepare import NUM_CLASSES, load_data, prepare

KEPT = {("dmd", False), ("amd", True)}  # (operator, sharpening) of the second stage


def gan_weights(text):
    generator, fake = (float(value) for value in text.split(","))
    return generator, fake


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="DMD2's GAN term on the digits, with and without AMD.")
    parser.add_argument("--output_dir", default="outputs/digits_gan")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--real_guidance_scale", type=float, default=1.5)
    parser.add_argument("--sensitivity", type=float, default=0.5)
    parser.add_argument(
        "--gan_weights",
        type=gan_weights,
        nargs="+",
        default=[(5e-3, 1e-2), (5e-2, 1e-1)],
        help="'generator,fake' weight pairs; default: DMD2's SDXL recipe (5e-3,1e-2) and ten times it.",
    )
    add_budget_arguments(parser)
    parser.set_defaults(operators=["dmd", "amd"])
    args = parser.parse_args(argv)
    check_budget_arguments(parser, args)
    return args


def plan_study(args):
    """The warm starts and the kept second-stage runs, without the GAN term and with each pair of weights."""
    warmups, finetunes = [], []
    for gan in [None, *args.gan_weights]:
        label = "" if gan is None else f"GAN {gan[0]:g}/{gan[1]:g}, "
        runs_dir = os.path.join(args.output_dir, "runs", "no_gan" if gan is None else f"gan_{gan[0]:g}_{gan[1]:g}")
        for seed in args.seeds:
            warmup, finetune = plan_runs(
                args, runs_dir, seed, args.real_guidance_scale, [args.sensitivity], label=label, gan=gan
            )
            warmups += warmup
            finetunes += [run for run in finetune if (run["operator"], run["sharpen"]) in KEPT]
    return warmups, finetunes


@torch.no_grad()
def discriminator_table(args, paths, warmups, samples=500):
    """How well each GAN warm start's discriminator (its fake adapter and head, from its last checkpoint) tells the
    real digits it trained on from its own student's samples, at several SiT times t (1 clean): mean D on each,
    and the balanced accuracy of the sign of the logit. A markdown table."""
    images, labels, half = load_data()
    real, real_labels = images[half == 0][:samples], labels[half == 0][:samples]
    lines = ["| GAN weights | seed | t | D(real) | D(generated) | balanced accuracy |", "|---|---|---|---|---|---|"]
    for run in (run for run in warmups if run["gan"] is not None and run["seed"] == args.seeds[0]):
        checkpoint = os.path.join(run["dir"], f"checkpoint-{args.warmup_steps}")
        model = DiTTransformer2DModel.from_pretrained(paths["teacher"], subfolder="transformer").eval()
        use_sit_time_embedding(model)
        add_student_and_fake_adapters(model, LORA_TARGET_MODULES, LORA_RANK)
        load_lora_state_dict(model, FAKE, load_file(os.path.join(checkpoint, "fake_lora.safetensors")))
        head = discriminator_head(model.config)
        head.load_state_dict(load_file(os.path.join(checkpoint, HEAD_FILE)))
        generated, generated_labels = sample_per_class(
            load_pipeline(run["dir"]), samples // NUM_CLASSES, seed=EVALUATION_SEED
        )
        torch.manual_seed(0)
        for t in (0.98, 0.9, 0.7, 0.5, 0.2):
            logits = []
            for x, y in ((real, real_labels), (generated * 2 - 1, generated_labels)):
                t_batch = torch.full((len(x),), t)
                logits.append(
                    head(fake_forward(model, model, sit_add_noise(x, torch.randn_like(x), t_batch), t_batch, y)[1])
                )
            accuracy = ((logits[0] > 0).double().mean() + (logits[1] <= 0).double().mean()).item() / 2
            d_real, d_generated = (torch.sigmoid(logit).mean().item() for logit in logits)
            weights = f"{run['gan'][0]:g} / {run['gan'][1]:g}"
            lines.append(f"| {weights} | {run['seed']} | {t:g} | {d_real:.3f} | {d_generated:.3f} | {accuracy:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    start = time.monotonic()
    paths = prepare(args.output_dir, args.teacher_steps, args.classifier_steps)
    warmups, finetunes = plan_study(args)
    train_and_evaluate(args, paths, warmups, finetunes, [args.real_guidance_scale])
    table = discriminator_table(args, paths, warmups)
    with open(os.path.join(args.output_dir, "discriminator.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    minutes, seconds = divmod(round(time.monotonic() - start), 60)
    print(f"\nThe study took {minutes} min {seconds} s. Wrote {os.path.join(args.output_dir, 'results.md')}.")


if __name__ == "__main__":
    pin_cpu_arithmetic("examples.digits.gan_study")
    main()
