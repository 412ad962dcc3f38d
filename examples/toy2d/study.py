"""The paper's 2D study (Appendix F.1 / Fig. 8 and Section 4.3 / Fig. 7), reproduced on CPU.

A class-conditional mixture of 8 Gaussians on a ring: its noised densities are analytic, so the real
teacher's conditional and unconditional denoisers are exact closed forms. A one-step MLP student and an
MLP fake teacher are trained online with the same ``amd_utils`` functions the trainers use. The grid runs
every operator (dmd, naive, amd) with Repulsive Landscape Sharpening off and on under a selective reward
(it favours the 4 modes in the lower-left half, x + y < 0), plus amd with sharpening under a global
reward (closeness to any mode), so the operator's effect and the sharpening's can be read apart.

    python -m examples.toy2d.study                      # the full grid, 2 seeds, a few minutes on 2 cores
    python -m examples.toy2d.study --sensitivity 1.0 --group_size 4 --real_guidance_scale 3

Writes ``<output_dir>/<run>_seed<k>.png`` (student samples at a few iterations, next to the CFG
teacher's), ``results.csv`` and ``results.md`` (one row per run and seed).
"""

import argparse
import csv
import math
import multiprocessing
import os
import time

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from amd_utils.objective import (
    adaptive_coefficients,
    compose_gradient,
    fake_sample_weights,
    generator_loss,
    group_advantages,
    guided,
    normalize_per_sample,
    weighted_denoising_loss,
)
from amd_utils.parameterization import flow_add_noise, flow_model_target, flow_x0, sample_noise_levels
from examples.reproducible import pin_cpu_arithmetic

# ----------------------------------------------------------------------------- the data

NUM_MODES, NUM_CLASSES, RING_RADIUS, MODE_STD = 8, 2, 2.0, 0.15
_angles = 2 * math.pi * (torch.arange(NUM_MODES, dtype=torch.float32) + 0.5) / NUM_MODES
MEANS = RING_RADIUS * torch.stack([_angles.cos(), _angles.sin()], dim=1)  # (8, 2)
MODE_CLASS = torch.arange(NUM_MODES) % NUM_CLASSES  # classes alternate around the ring
FAVOURED = MEANS.sum(dim=1) < 0  # the selective reward's modes: the lower-left half, 2 per class
CAPTURE_RADIUS = 4 * MODE_STD  # a sample this close to a mode belongs to it (modes are 1.53 apart)
EJECTION_RADIUS = 1.5 * RING_RADIUS  # beyond this a sample was thrown out of the data (its edge is at 2.6)


def _posterior_mean(x_t, sigma, log_prior):
    """E[x0 | x_t] for x_t = (1 - sigma) x0 + sigma noise, x0 ~ sum_k prior_k N(mean_k, MODE_STD^2 I).

    Each mode noises to N((1 - sigma) mean_k, v I) with v = (1 - sigma)^2 MODE_STD^2 + sigma^2; the
    posterior is the responsibility-weighted sum of each mode's Gaussian posterior mean."""
    scale, sigma = (1 - sigma)[:, None], sigma[:, None]
    variance = scale**2 * MODE_STD**2 + sigma**2
    offset = x_t[:, None, :] - scale[:, :, None] * MEANS  # (B, 8, 2)
    responsibility = (log_prior - offset.pow(2).sum(-1) / (2 * variance)).softmax(dim=-1)
    per_mode = MEANS + (scale * MODE_STD**2 / variance)[:, :, None] * offset
    return (responsibility[..., None] * per_mode).sum(dim=1)


def teacher_x0(x_t, sigma, labels):
    """The real teacher's exact conditional and unconditional clean estimates."""
    log_prior_cond = torch.where(MODE_CLASS == labels[:, None], 0.0, -math.inf)
    return _posterior_mean(x_t, sigma, log_prior_cond), _posterior_mean(x_t, sigma, torch.zeros(1, NUM_MODES))


@torch.no_grad()
def teacher_samples(labels, guidance_scale, generator, num_steps=200):
    """The CFG teacher's distribution: the probability-flow ODE of the guided denoiser, from sigma = 1 to 0
    (Euler in the x0 parameterization: x <- x0 + sigma_next / sigma * (x - x0))."""
    x = torch.randn(len(labels), 2, generator=generator)
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x0 = guided(*teacher_x0(x, sigma.expand(len(x)), labels), guidance_scale)
        x = x0 + sigma_next / sigma * (x - x0)
    return x


def distances(x, points):
    """(B, P) Euclidean distances (not torch.cdist, whose matmul shortcut is off by ~1e-4 at 0)."""
    return (x[:, None, :] - points).norm(dim=-1)


def selective_reward(x):
    """Negative distance to the nearest favoured mode: high on the lower-left modes only."""
    return -distances(x, MEANS[FAVOURED]).min(dim=1).values


def global_reward(x):
    """Negative distance to the nearest mode: high anywhere on the data."""
    return -distances(x, MEANS).min(dim=1).values


REWARDS = {"selective": selective_reward, "global": global_reward}

# ----------------------------------------------------------------------------- the grid

RUNS = [(operator, sharpen, "selective") for operator in ("dmd", "naive", "amd") for sharpen in (False, True)]
RUNS.append(("amd", True, "global"))


def run_name(operator, sharpen, reward):
    return f"{operator}_{'sharpen' if sharpen else 'nosharpen'}_{reward}"


# ----------------------------------------------------------------------------- training


def mlp(in_features, hidden, out_features=2):
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.SiLU(),
        nn.Linear(hidden, hidden), nn.SiLU(),
        nn.Linear(hidden, hidden), nn.SiLU(),
        nn.Linear(hidden, out_features),
    )  # fmt: skip


def train(args, operator, sharpen, reward_name, seed, eval_noise, eval_labels):
    """One AMD run (Algorithm 1); returns the student's samples of ``eval_noise`` at a few steps."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    reward_fn = REWARDS[reward_name]
    onehot = torch.eye(NUM_CLASSES)
    student = mlp(2 + NUM_CLASSES, args.hidden_size)  # G_theta(z, c): one step from noise to sample
    fake = mlp(2 + 1 + NUM_CLASSES, args.hidden_size)  # psi(x_t, sigma, c): a flow-matching velocity
    # beta1 = 0 as in DMD2: the fake teacher chases a moving target.
    student_optimizer = torch.optim.Adam(student.parameters(), lr=args.learning_rate, betas=(0.0, 0.99))
    fake_optimizer = torch.optim.Adam(fake.parameters(), lr=args.fake_learning_rate, betas=(0.0, 0.99))
    batch_size = args.num_groups * args.group_size
    snapshot_steps = {round(f * args.max_train_steps) for f in (0, 0.25, 0.5, 0.75, 1.0)}
    snapshots = {}

    for iteration in range(args.max_train_steps * args.fake_update_ratio + 1):
        step, phase = divmod(iteration, args.fake_update_ratio)
        student_turn = phase == 0
        if student_turn and step in snapshot_steps:
            with torch.no_grad():
                snapshots[step] = student(torch.cat([eval_noise, onehot[eval_labels]], dim=1))
        if step == args.max_train_steps:
            break

        # K samples per class label (group-contiguous), rewards, advantages (Eq. 12).
        labels = torch.randint(0, NUM_CLASSES, (args.num_groups,), generator=generator).repeat_interleave(
            args.group_size
        )
        noise = torch.randn(batch_size, 2, generator=generator)
        with torch.set_grad_enabled(student_turn):
            x = student(torch.cat([noise, onehot[labels]], dim=1))
        advantages = group_advantages(reward_fn(x.detach()), args.group_size)

        if student_turn:
            # Re-noise, score with the real teacher (cond / uncond) and the fake teacher, compose (Eqs. 7-10).
            sigma = sample_noise_levels(batch_size, args.min_noise_level, args.max_noise_level, generator=generator)
            x_t = flow_add_noise(x.detach(), torch.randn(batch_size, 2, generator=generator), sigma)
            with torch.no_grad():
                x0_cond, x0_uncond = teacher_x0(x_t, sigma, labels)
                x0_fake = flow_x0(x_t, fake(torch.cat([x_t, sigma[:, None], onehot[labels]], dim=1)), sigma)
            d_cond, d_uncond, d_fake = x.detach() - x0_cond, x.detach() - x0_uncond, x.detach() - x0_fake
            alpha, beta = adaptive_coefficients(advantages, args.sensitivity)  # Eq. 13
            g = compose_gradient(operator, d_cond, d_uncond, d_fake, args.real_guidance_scale, alpha, beta)
            g = normalize_per_sample(g, guided(d_cond, d_uncond, args.real_guidance_scale))
            student_optimizer.zero_grad(set_to_none=True)
            generator_loss(x, g).backward()
            student_optimizer.step()

        # Fake teacher: denoising loss on the detached samples, weighted by W(a) (Eq. 14).
        x = x.detach()
        sigma = sample_noise_levels(batch_size, 0.0, 1.0, generator=generator)
        fresh_noise = torch.randn(batch_size, 2, generator=generator)
        prediction = fake(torch.cat([flow_add_noise(x, fresh_noise, sigma), sigma[:, None], onehot[labels]], dim=1))
        fake_loss = weighted_denoising_loss(
            prediction, flow_model_target(x, fresh_noise), fake_sample_weights(advantages, sharpen)
        )
        fake_optimizer.zero_grad(set_to_none=True)
        fake_loss.backward()
        fake_optimizer.step()
    return snapshots


# ----------------------------------------------------------------------------- metrics


def sliced_wasserstein(a, b, num_projections=256, seed=0):
    """Sliced 1-Wasserstein distance between two equally sized 2D point sets."""
    directions = torch.randn(num_projections, 2, generator=torch.Generator().manual_seed(seed))
    directions = directions / directions.norm(dim=1, keepdim=True)
    projected_a = (a @ directions.T).sort(dim=0).values
    projected_b = (b @ directions.T).sort(dim=0).values
    return (projected_a - projected_b).abs().mean().item()


def evaluate(samples, labels, reference, reward_fn):
    distance, nearest = distances(samples, MEANS).min(dim=1)
    captured = distance < CAPTURE_RADIUS
    # A mode is covered when it holds at least 5% of its own class's samples (a fair share is 25%).
    covered = 0
    for mode in range(NUM_MODES):
        own_class = labels == MODE_CLASS[mode]
        covered += int((captured & own_class & (nearest == mode)).sum() >= 0.05 * own_class.sum())
    return {
        "high_reward_mass": (captured & FAVOURED[nearest]).float().mean().item(),
        "modes_covered": covered,
        "mean_reward": reward_fn(samples).mean().item(),
        "sw_to_teacher": sliced_wasserstein(samples, reference),
        "off_mode": (~captured).float().mean().item(),
        "ejected": (samples.norm(dim=1) > EJECTION_RADIUS).float().mean().item(),
    }


# ----------------------------------------------------------------------------- outputs


def plot_run(path, title, snapshots, reference, labels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("CFG teacher (target)", reference)] + [(f"student, step {s}", x) for s, x in sorted(snapshots.items())]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for ax, (name, points) in zip(axes[0], panels):
        for c in range(NUM_CLASSES):
            p = points[labels == c]
            ax.scatter(p[:, 0], p[:, 1], s=0.5, alpha=0.35, color=f"C{c}", rasterized=True)
        ax.scatter(*MEANS[FAVOURED].T, marker="*", s=60, color="k")
        ax.scatter(*MEANS[~FAVOURED].T, marker="x", s=30, color="k")
        ax.set(xlim=(-4, 4), ylim=(-4, 4), xticks=[], yticks=[], aspect="equal", title=name)
        ax.title.set_fontsize(8)
    fig.suptitle(title + "   (* favoured by the selective reward, x not; colour = class)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


COLUMNS = ["run", "seed", "high_reward_mass", "modes_covered", "mean_reward", "sw_to_teacher", "off_mode", "ejected"]


def markdown_table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append(
            "| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |"
        )
    return "\n".join(lines) + "\n"


def mean_over_seeds(rows):
    runs = list(dict.fromkeys(row["run"] for row in rows))
    summary = []
    for run in runs:
        mine = [row for row in rows if row["run"] == run]
        means = {c: sum(float(row[c]) for row in mine) / len(mine) for c in COLUMNS[2:]}
        summary.append({"run": run, "seeds": len(mine), **means})
    return summary


def write_tables(rows, output_dir):
    with open(os.path.join(output_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    text = (
        "Per run and seed:\n\n" + markdown_table(rows, COLUMNS)
        + "\nMean over seeds:\n\n" + markdown_table(mean_over_seeds(rows), ["run", "seeds"] + COLUMNS[2:])
    )  # fmt: skip
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(text)
    return text


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/toy2d")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--group_size", type=int, default=8, help="K samples per class label in a group (Eq. 12).")
    parser.add_argument(
        "--num_groups", type=int, default=32, help="Groups per batch; batch size = num_groups * group_size."
    )
    parser.add_argument("--sensitivity", type=float, default=0.5, help="s in Eq. 13.")
    parser.add_argument(
        "--real_guidance_scale", type=float, default=2.0, help="CFG scale w of the real teacher (1 = none)."
    )
    parser.add_argument("--max_train_steps", type=int, default=1000, help="Student updates per run.")
    parser.add_argument("--fake_update_ratio", type=int, default=5, help="Fake updates per student update (DMD2: 5).")
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="Student learning rate.")
    parser.add_argument("--fake_learning_rate", type=float, default=3e-3)
    parser.add_argument("--min_noise_level", type=float, default=0.02, help="Score noise levels (sigma) are drawn from")
    parser.add_argument("--max_noise_level", type=float, default=0.98, help="[min, max] (DMD2's 20..980 of 1000).")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--eval_samples", type=int, default=2000, help="Evaluation samples per class.")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count(), help="Runs trained in parallel.")
    args = parser.parse_args(argv)
    if args.group_size < 2:
        parser.error(f"--group_size must be at least 2 to rank samples within a group, got {args.group_size}.")
    for name in ("num_groups", "max_train_steps", "fake_update_ratio", "eval_samples", "num_workers", "hidden_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    return args


def _run_job(job):
    args, (operator, sharpen, reward_name), seed, eval_noise, eval_labels, reference = job
    torch.set_num_threads(1)  # one run per core
    start = time.perf_counter()
    snapshots = train(args, operator, sharpen, reward_name, seed, eval_noise, eval_labels)
    final = snapshots[args.max_train_steps]
    row = {"run": run_name(operator, sharpen, reward_name), "seed": seed}
    row.update(evaluate(final, eval_labels, reference, REWARDS[reward_name]))
    title = f"{operator}, sharpening {'on' if sharpen else 'off'}, {reward_name} reward, seed {seed}"
    plot_run(os.path.join(args.output_dir, f"{row['run']}_seed{seed}.png"), title, snapshots, reference, eval_labels)
    return row, time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    started = time.perf_counter()
    eval_labels = torch.arange(NUM_CLASSES).repeat_interleave(args.eval_samples)
    jobs, teacher_rows = [], []
    for seed in args.seeds:
        generator = torch.Generator().manual_seed(10_000 + seed)
        eval_noise = torch.randn(len(eval_labels), 2, generator=generator)
        reference = teacher_samples(eval_labels, args.real_guidance_scale, generator)
        # The teacher against an independent draw of itself: the floor of the distance metric.
        floor = teacher_samples(eval_labels, args.real_guidance_scale, generator)
        teacher_rows.append(
            {"run": "cfg_teacher_200_steps", "seed": seed, **evaluate(floor, eval_labels, reference, selective_reward)}
        )
        jobs += [(args, run, seed, eval_noise, eval_labels, reference) for run in RUNS]

    rows = []
    context = multiprocessing.get_context("spawn")  # fork after torch has started its threads can hang
    with (
        context.Pool(min(args.num_workers, len(jobs))) as pool,
        tqdm(total=len(jobs), desc="toy2d runs", unit="run") as bar,
    ):
        for row, seconds in pool.imap_unordered(_run_job, jobs):
            rows.append(row)
            bar.set_postfix_str(f"{row['run']} seed {row['seed']}: {seconds:.0f}s")
            bar.update()
    order = {run_name(*run): i for i, run in enumerate(RUNS)}
    rows.sort(key=lambda r: (order[r["run"]], r["seed"]))
    table = write_tables(teacher_rows + rows, args.output_dir)
    print(table)
    print(f"{len(jobs)} runs in {time.perf_counter() - started:.0f}s; plots and tables in {args.output_dir}")


if __name__ == "__main__":
    pin_cpu_arithmetic("examples.toy2d.study")
    main()
