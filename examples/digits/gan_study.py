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

Writes ``<output_dir>/results.md`` (mean ± std over seeds, then one row per run) and ``results.json``, as the demo.
"""

import argparse
import os
import time

from .demo import (
    add_budget_arguments,
    check_budget_arguments,
    evaluate_sources,
    plan_runs,
    real_digits_evaluator,
    run_sources,
    teacher_sources,
    train_all,
    write_results,
)
from .prepare import prepare

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


def main(argv=None):
    args = parse_args(argv)
    start = time.monotonic()
    paths = prepare(args.output_dir, args.teacher_steps, args.classifier_steps)
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
    train_all(args, paths, warmups, "stage 1: the warm starts")
    train_all(args, paths, finetunes, "stage 2: each method")

    evaluator, real_row = real_digits_evaluator(paths)
    sources = teacher_sources(paths, args.teacher_sampling_steps, [args.real_guidance_scale])
    rows = [real_row] + evaluate_sources(
        args, sources + run_sources(args, warmups + finetunes), evaluator, args.seeds[0]
    )
    write_results(args, rows)
    minutes, seconds = divmod(round(time.monotonic() - start), 60)
    print(f"\nThe study took {minutes} min {seconds} s. Wrote {os.path.join(args.output_dir, 'results.md')}.")


if __name__ == "__main__":
    main()
