"""The digits study: where does AMD's operator matter?

The demo distils at guidance w = 1.5, where the CFG term of Eq. 10 that alpha rescales, (w - 1)(d_cond -
d_uncond), is small; the paper's SDXL runs use w = 8. This study repeats the demo's two-stage protocol at
several w, for ``dmd`` and ``amd``, with sharpening (Eq. 14) off and on, at several sensitivities s (Eq. 13),
over several seeds, and scores every run with the demo's metrics on the same noise.

    python -m examples.digits.study                                   # the full grid (about an hour on 2 cores)
    python -m examples.digits.study --guidance_scales 5 --seeds 0     # one w, one seed

Writes ``<output_dir>/results.md`` (mean ± std over seeds, then one row per run), ``results.json``, and
``reward_vs_fd_w<w>.png``: the mean reward against FD, one point per run and the teacher for reference, so
that each method's trade-off shows. The teacher, reward and judge in ``<output_dir>`` are reused.
"""

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from examples.reproducible import pin_cpu_arithmetic  # noqa: E402

from .demo import add_budget_arguments, check_budget_arguments, plan_runs, train_and_evaluate  # noqa: E402
from .prepare import prepare  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="The digits demo's protocol over guidance scales and sensitivities.")
    parser.add_argument("--output_dir", default="outputs/digits_study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[1.5, 3.0, 5.0])
    parser.add_argument("--sensitivities", type=float, nargs="+", default=[0.25, 0.5], help="s of Eq. 13 for amd.")
    add_budget_arguments(parser)
    parser.set_defaults(operators=["dmd", "amd"])
    args = parser.parse_args(argv)
    check_budget_arguments(parser, args)
    if min(args.guidance_scales) < 1:
        parser.error(f"--guidance_scales must be at least 1 (1: no guidance), got {args.guidance_scales}.")
    return args


def plot_reward_against_fd(args, rows, w):
    """At guidance ``w``: one small point per run, the mean over seeds large, circles without sharpening and
    triangles with it, a line from one to the other per method (its trade-off); the teacher as stars."""
    label = f"w = {w:g}, "
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    methods = list(dict.fromkeys(row["run"][len(label) :] for row in rows if row["run"].startswith(label)))
    family_of = {m: m.removesuffix(", no sharpening").removesuffix(", sharpening") for m in methods}
    for color, family in zip(plt.cm.tab10.colors, dict.fromkeys(family_of.values())):
        means = []
        for method in [m for m in methods if family_of[m] == family]:
            runs = [row for row in rows if row["run"] == label + method]
            fds, rewards = [row["fd"] for row in runs], [row["mean_reward"] for row in runs]
            marker = "^" if method.endswith(", sharpening") else "o"
            axes.scatter(fds, rewards, color=color, marker=marker, alpha=0.45, s=18)
            means.append((sum(fds) / len(fds), sum(rewards) / len(rewards)))
            axes.scatter(*means[-1], color=color, marker=marker, s=80, edgecolor="k", label=method)
        if len(means) == 2:
            axes.plot(*zip(*means), color=color, linewidth=1)
    for row in rows:
        if row["run"].startswith("teacher") and row["run"].endswith(f"w = {w:g}"):
            axes.scatter(row["fd"], row["mean_reward"], marker="*", s=160, color="gray", edgecolor="k")
            axes.annotate(
                row["run"], (row["fd"], row["mean_reward"]), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
    axes.set(xlabel="FD in the judge's features (lower is better)", ylabel="mean reward (higher is better)")
    axes.set_title(f"Digits, guidance w = {w:g}: small points are runs, large ones the mean over seeds", fontsize=9)
    axes.legend(fontsize=7)
    path = os.path.join(args.output_dir, f"reward_vs_fd_w{w:g}.png")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def main(argv=None):
    args = parse_args(argv)
    start = time.monotonic()
    paths = prepare(args.output_dir, args.teacher_steps, args.classifier_steps)
    warmups, finetunes = [], []
    for w in args.guidance_scales:
        for seed in args.seeds:
            runs_dir = os.path.join(args.output_dir, "runs", f"w{w:g}")
            warmup, finetune = plan_runs(args, runs_dir, seed, w, args.sensitivities, label=f"w = {w:g}, ")
            warmups += warmup
            finetunes += finetune
    rows = train_and_evaluate(args, paths, warmups, finetunes, args.guidance_scales)
    figures = [plot_reward_against_fd(args, rows, w) for w in args.guidance_scales]
    minutes, seconds = divmod(round(time.monotonic() - start), 60)
    print(
        f"\nThe study took {minutes} min {seconds} s. Wrote {os.path.join(args.output_dir, 'results.md')}, "
        + ", ".join(figures)
        + "."
    )


if __name__ == "__main__":
    pin_cpu_arithmetic("examples.digits.study")
    main()
