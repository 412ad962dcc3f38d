"""The digits demo: AMD end to end on CPU, nothing downloaded.

1. ``prepare``: a class-conditional DiT teacher trained with SiT's flow matching on scikit-learn's 8x8
   digits, a small DINOv2 classifier as the reward, and a separate CNN "judge" for evaluation.
2. ``accelerate launch train_amd_sit.py`` distils the teacher into a 4-step student with every operator
   (dmd, naive, amd), each with repulsive landscape sharpening off and on, for every seed: same flags,
   same budget, so the table separates what the operator does from what the sharpening does.
3. Every output folder is loaded with ``DiffusionPipeline.from_pretrained(..., trust_remote_code=True)``
   and scored on the same noise by metrics that never reuse the reward model (``evaluate.py``), next to
   the teacher at its full step count and at 4 steps.

    python -m examples.digits.demo                              # the full grid, 2 seeds
    python -m examples.digits.demo --seeds 0 --operators dmd amd  # a quicker subset

Writes ``<output_dir>/results.md`` (the table, mean over seeds, then one row per run), ``results.json``,
a sample grid per method in ``<output_dir>/grids/`` (a row per class), and each run's folder and log in
``<output_dir>/runs/``. The teacher, reward and judge are kept and reused by later runs of the demo: delete
them to retrain with other ``--teacher_steps`` or ``--classifier_steps``.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import logging as diffusers_logging
from tqdm.auto import tqdm

from amd_utils.images import image_grid
from amd_utils.objective import OPERATORS

from .evaluate import Evaluator, sample_per_class
from .prepare import NUM_CLASSES, load_data, prepare

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRICS = ("fd", "accuracy", "mean_reward", "diversity")
GRID_SAMPLES_PER_CLASS = 8
EVALUATION_SEED = 1234  # the same noise for every model
STUDENT_SIGMAS = [1.0, 0.75, 0.5, 0.25]  # train_amd_sit.py's default --student_timesteps, as noise levels


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="AMD on scikit-learn's digits, end to end on CPU.")
    parser.add_argument("--output_dir", default="outputs/digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--operators", nargs="+", default=list(OPERATORS), choices=OPERATORS)
    parser.add_argument("--teacher_steps", type=int, default=1000, help="Teacher training steps (batch 128).")
    parser.add_argument(
        "--classifier_steps", type=int, default=1500, help="Training steps of the reward and the judge."
    )
    parser.add_argument(
        "--warmup_steps", type=int, default=400, help="Steps of the shared pure-DMD first stage (paper, App. A.4)."
    )
    parser.add_argument("--finetune_steps", type=int, default=200, help="Steps of every method after the warm start.")
    parser.add_argument("--real_guidance_scale", type=float, default=1.5)
    parser.add_argument("--sensitivity", type=float, default=0.5)
    parser.add_argument("--samples_per_class", type=int, default=100, help="Samples per class for the metrics.")
    parser.add_argument("--teacher_sampling_steps", type=int, default=50, help="The teacher's full step count.")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="Distillation runs at once.")
    args = parser.parse_args(argv)
    for name in (
        "teacher_steps",
        "classifier_steps",
        "warmup_steps",
        "finetune_steps",
        "teacher_sampling_steps",
        "jobs",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.samples_per_class < 2:
        parser.error("--samples_per_class must be at least 2 to measure within-class diversity.")
    return args


def plan_runs(args):
    """Stage 1: pure DMD from the teacher, one run per seed, checkpointed at its end. Stage 2: every
    (operator, sharpening) pair resumes that checkpoint (adapters, optimizers and random state) and trains
    ``finetune_steps`` more, so the runs of one seed differ in their objective alone."""
    runs_dir = os.path.join(args.output_dir, "runs")
    warmups, finetunes = [], []
    for seed in args.seeds:
        warmup = {"name": "dmd warm start", "operator": "dmd", "sharpen": False, "seed": seed,
                  "dir": os.path.join(runs_dir, f"dmd_warmup_seed{seed}"), "steps": args.warmup_steps, "resume": None}  # fmt: skip
        warmups.append(warmup)
        for operator in args.operators:
            for sharpen in (False, True):
                name = f"{operator}, {'sharpening' if sharpen else 'no sharpening'}"
                folder = f"{operator}_{'sharpen' if sharpen else 'nosharpen'}_seed{seed}"
                finetunes.append({
                    "name": name, "operator": operator, "sharpen": sharpen, "seed": seed, "dir": os.path.join(runs_dir, folder),
                    "steps": args.warmup_steps + args.finetune_steps,
                    "resume": os.path.join(warmup["dir"], f"checkpoint-{args.warmup_steps}"),
                })  # fmt: skip
    return warmups, finetunes


def train_command(args, paths, run, threads):
    """The ``accelerate launch train_amd_sit.py`` call of one run: every run gets the same flags but these."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", str(threads),
        os.path.join(REPO, "train_amd_sit.py"),
        "--pretrained_model_name_or_path", paths["teacher"], "--reward", "dinov2", "--reward_model_name_or_path", paths["reward"],
        "--operator", run["operator"], "--sharpen" if run["sharpen"] else "--no_sharpen", "--sensitivity", str(args.sensitivity),
        "--real_guidance_scale", str(args.real_guidance_scale), "--seed", str(run["seed"]), "--output_dir", run["dir"],
        "--max_train_steps", str(run["steps"]), "--train_batch_size", "64", "--group_size", "4",
        "--learning_rate", "1e-3", "--lora_rank", "16", "--validation_steps", str(run["steps"]),
        "--validation_class_labels", *map(str, range(NUM_CLASSES)), "--report_to", "tensorboard",
        "--checkpointing_steps", str(args.warmup_steps if run["resume"] is None else run["steps"] + 1),  # stage 1's end only
    ]  # fmt: skip
    if run["resume"] is not None:
        command += ["--resume_from_checkpoint", run["resume"]]
    return command


def train_all(args, paths, runs, desc):
    """Run the distillations ``args.jobs`` at a time, each with its share of the cores, logs to files."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
    }

    def train(run):
        shutil.rmtree(run["dir"], ignore_errors=True)  # this demo's own earlier output for the run
        with open(run["dir"] + ".log", "w") as log:
            result = subprocess.run(
                train_command(args, paths, run, threads), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )
        if result.returncode != 0:
            raise SystemExit(f"examples.digits.demo: the run {run['dir']} failed: its log is {run['dir']}.log.")

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(train, run) for run in runs]
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc):
            future.result()


def save_grid(images, path):
    """The first samples of every class, a row per class."""
    per_class = images.reshape(NUM_CLASSES, -1, *images.shape[1:])[:, :GRID_SAMPLES_PER_CLASS]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image_grid(per_class.flatten(0, 1), columns=per_class.shape[1]).save(path)


def load_pipeline(path, **components):
    pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate_all(args, paths, runs, evaluator):
    """Rows of metrics for the teacher (full step count; 4 Euler steps; the student before training, i.e.
    the teacher sampled in the student's 4 steps) and for every run, all on the same noise."""
    teacher = load_pipeline(paths["teacher"])
    untrained_student = load_pipeline(
        paths["teacher"],
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(teacher.scheduler.config, stochastic_sampling=True),
    )
    w, full = args.real_guidance_scale, args.teacher_sampling_steps
    sources = [
        (f"teacher, {full} steps, w = 1", None, "teacher_full_w1", teacher, {"num_inference_steps": full}),
        (f"teacher, {full} steps, w = {w:g}", None, "teacher_full_cfg", teacher, {"num_inference_steps": full, "guidance_scale": w}),
        (f"teacher, 4 steps, w = {w:g}", None, "teacher_4steps_cfg", teacher, {"num_inference_steps": 4, "guidance_scale": w}),
        ("student before distillation", None, "student_step0", untrained_student, {"sigmas": STUDENT_SIGMAS}),
    ]  # fmt: skip
    sources += [(run["name"], run["seed"], os.path.basename(run["dir"]), run["dir"], {}) for run in runs]
    rows = []
    for name, seed, stem, pipe, kwargs in tqdm(sources, desc="evaluating"):
        if isinstance(pipe, str):
            pipe = load_pipeline(pipe)
        images, labels = sample_per_class(pipe, args.samples_per_class, seed=EVALUATION_SEED, **kwargs)
        rows.append({"run": name, "seed": seed, **evaluator(images, labels)})
        if seed in (None, args.seeds[0]):
            save_grid(images, os.path.join(args.output_dir, "grids", f"{stem}.png"))
    return rows


def summarize(rows):
    """Mean and standard deviation over seeds of every metric, one line per run name, in first-seen order."""
    names = list(dict.fromkeys(row["run"] for row in rows))
    summary = []
    for name in names:
        group = [row for row in rows if row["run"] == name]
        entry = {"run": name, "seeds": len(group)}
        for metric in METRICS:
            values = [row[metric] for row in group]
            entry[metric] = statistics.fmean(values)
            entry[metric + "_std"] = statistics.pstdev(values)
        summary.append(entry)
    return summary


def markdown_table(summary, per_run):
    header = (
        "| run | FD (judge features) | accuracy (judge) | mean reward | within-class diversity |\n|---|---|---|---|---|"
    )
    lines = [header]
    for entry in summary:
        cells = []
        for metric in METRICS:
            digits = 3 if metric != "fd" else 1
            cell = f"{entry[metric]:.{digits}f}"
            if entry["seeds"] > 1:
                cell += f" ± {entry[metric + '_std']:.{digits}f}"
            cells.append(cell)
        lines.append(f"| {entry['run']} | " + " | ".join(cells) + " |")
    lines += ["", "Per run:", "", "| run | seed | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for row in per_run:
        lines.append(f"| {row['run']} | {row['seed']} | " + " | ".join(f"{row[m]:.4f}" for m in METRICS) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    paths = prepare(args.output_dir, args.teacher_steps, args.classifier_steps)
    warmups, finetunes = plan_runs(args)
    os.makedirs(os.path.join(args.output_dir, "runs"), exist_ok=True)
    train_all(args, paths, warmups, "stage 1: pure DMD")
    train_all(args, paths, finetunes, "stage 2: each method")

    torch.set_num_threads(os.cpu_count() or 1)
    diffusers_logging.disable_progress_bar()  # one bar for the whole evaluation instead of one per pipeline load
    images, labels, half = load_data()
    images = (images + 1) / 2
    # The judge trained on half 1: the Frechet reference is that half, the real-data row the other half.
    evaluator = Evaluator(paths["judge"], paths["reward"], images[half == 1])
    real_row = {"run": "real digits (the other half)", "seed": None, **evaluator(images[half == 0], labels[half == 0])}
    rows = [real_row] + evaluate_all(args, paths, warmups + finetunes, evaluator)
    summary = summarize(rows)
    table = markdown_table(summary, rows)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"settings": vars(args), "summary": summary, "runs": rows}, f, indent=2)
    print(table.split("\n\nPer run:")[0])
    print(
        f"\nWrote {os.path.join(args.output_dir, 'results.md')} and the sample grids in "
        f"{os.path.join(args.output_dir, 'grids')}."
    )


if __name__ == "__main__":
    main()
