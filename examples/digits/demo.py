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
from examples.reproducible import pin_cpu_arithmetic

from .evaluate import Evaluator, sample_per_class
from .prepare import NUM_CLASSES, THREADS, load_data, prepare

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRICS = ("fd", "accuracy", "mean_reward", "diversity")
GRID_SAMPLES_PER_CLASS = 8
EVALUATION_SEED = 1234  # the same noise for every model
STUDENT_SIGMAS = [1.0, 0.75, 0.5, 0.25]  # train_amd_sit.py's default --student_timesteps, as noise levels
LORA_RANK = 16


def add_budget_arguments(parser):
    """The flags the demo and the study share: what is trained, for how long, and how it is scored."""
    parser.add_argument("--operators", nargs="+", default=list(OPERATORS), choices=OPERATORS)
    parser.add_argument("--teacher_steps", type=int, default=1000, help="Teacher training steps (batch 128).")
    parser.add_argument(
        "--classifier_steps", type=int, default=1500, help="Training steps of the reward and the judge."
    )
    parser.add_argument(
        "--warmup_steps", type=int, default=400, help="Steps of the shared pure-DMD first stage (paper, App. A.4)."
    )
    parser.add_argument("--finetune_steps", type=int, default=200, help="Steps of every method after the warm start.")
    parser.add_argument("--samples_per_class", type=int, default=100, help="Samples per class for the metrics.")
    parser.add_argument("--teacher_sampling_steps", type=int, default=50, help="The teacher's full step count.")
    parser.add_argument(
        "--jobs", type=int, default=min(8, os.cpu_count() or 1), help="Distillation runs at once, a thread each."
    )


def check_budget_arguments(parser, args):
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="AMD on scikit-learn's digits, end to end on CPU.")
    parser.add_argument("--output_dir", default="outputs/digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--real_guidance_scale", type=float, default=1.5)
    parser.add_argument("--sensitivity", type=float, default=0.5)
    add_budget_arguments(parser)
    args = parser.parse_args(argv)
    check_budget_arguments(parser, args)
    return args


def plan_runs(args, runs_dir, seed, guidance, sensitivities, label="", gan=None):
    """Stage 1: pure DMD from the teacher, one run, checkpointed at its end. Stage 2: every (operator,
    sharpening) pair, for every sensitivity s of ``sensitivities`` (dmd ignores s: one), resumes that
    checkpoint (adapters, optimizers and random state) and trains ``finetune_steps`` more, so the runs of one
    seed differ in their objective alone. With several s, the names and folders say which; ``label``
    prefixes the names. ``gan``: (generator weight, fake weight) of DMD2's GAN term in both stages, or None."""
    shared = {"seed": seed, "guidance": guidance, "gan": gan}
    warmup = {
        **shared, "name": label + "dmd warm start", "operator": "dmd", "sharpen": False,
        "sensitivity": sensitivities[0], "dir": os.path.join(runs_dir, f"dmd_warmup_seed{seed}"),
        "steps": args.warmup_steps, "resume": None,
    }  # fmt: skip
    finetunes = []
    for operator in args.operators:
        for sensitivity in sensitivities[:1] if operator == "dmd" else sensitivities:
            named_s = len(sensitivities) > 1 and operator != "dmd"
            for sharpen in (False, True):
                name = f"{label}{operator}, " + (f"s = {sensitivity:g}, " if named_s else "")
                folder = operator + (f"_s{sensitivity:g}" if named_s else "")
                finetunes.append({
                    **shared, "name": name + ("sharpening" if sharpen else "no sharpening"), "operator": operator,
                    "sharpen": sharpen, "sensitivity": sensitivity, "steps": args.warmup_steps + args.finetune_steps,
                    "dir": os.path.join(runs_dir, f"{folder}_{'sharpen' if sharpen else 'nosharpen'}_seed{seed}"),
                    "resume": os.path.join(warmup["dir"], f"checkpoint-{args.warmup_steps}"),
                })  # fmt: skip
    return [warmup], finetunes


def train_command(args, paths, run):
    """The ``accelerate launch train_amd_sit.py`` call of one run: every run gets the same flags but these."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
        os.path.join(REPO, "train_amd_sit.py"),
        "--pretrained_model_name_or_path", paths["teacher"],
        "--reward", "dinov2", "--reward_model_name_or_path", paths["reward"], "--operator", run["operator"],
        "--sharpen" if run["sharpen"] else "--no_sharpen", "--sensitivity", str(run["sensitivity"]),
        "--real_guidance_scale", str(run["guidance"]), "--seed", str(run["seed"]), "--output_dir", run["dir"],
        "--max_train_steps", str(run["steps"]), "--train_batch_size", "64", "--group_size", "4",
        "--learning_rate", "1e-3", "--lora_rank", str(LORA_RANK), "--validation_steps", str(run["steps"]),
        "--validation_class_labels", *map(str, range(NUM_CLASSES)), "--report_to", "tensorboard",
        # a checkpoint at stage 1's end only
        "--checkpointing_steps", str(args.warmup_steps if run["resume"] is None else run["steps"] + 1),
    ]  # fmt: skip
    if run["resume"] is not None:
        command += ["--resume_from_checkpoint", run["resume"]]
    if run["gan"] is not None:
        command += ["--gan_loss_weight", str(run["gan"][0]), "--fake_gan_loss_weight", str(run["gan"][1])]
        command += ["--train_data_dir", paths["real_images"]]
    return command


def train_all(args, paths, runs, desc):
    """Run the distillations ``args.jobs`` at a time, each on one thread whatever the machine (the arithmetic does not
    depend on the core count), logs to files."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
    }

    def train(run):
        shutil.rmtree(run["dir"], ignore_errors=True)  # this demo's own earlier output for the run
        os.makedirs(os.path.dirname(run["dir"]), exist_ok=True)
        with open(run["dir"] + ".log", "w") as log:
            result = subprocess.run(
                train_command(args, paths, run), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
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


def teacher_sources(paths, full_steps, guidance_scales):
    """The reference rows: the teacher at its full step count without guidance, the student before training
    (the teacher in the student's 4 steps), and at every guidance scale w the teacher at its full step count
    (the distillation target) and in 4 Euler steps."""
    teacher = load_pipeline(paths["teacher"])
    untrained_student = load_pipeline(
        paths["teacher"],
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(teacher.scheduler.config, stochastic_sampling=True),
    )
    sources = [
        (f"teacher, {full_steps} steps, w = 1", None, "teacher_full_w1", teacher, {"num_inference_steps": full_steps}),
        ("student before distillation", None, "student_step0", untrained_student, {"sigmas": STUDENT_SIGMAS}),
    ]
    for w in guidance_scales:
        full = {"num_inference_steps": full_steps, "guidance_scale": w}
        sources += [
            (f"teacher, {full_steps} steps, w = {w:g}", None, f"teacher_full_w{w:g}", teacher, full),
            (
                f"teacher, 4 steps, w = {w:g}",
                None,
                f"teacher_4steps_w{w:g}",
                teacher,
                {**full, "num_inference_steps": 4},
            ),
        ]
    return sources


def evaluate_sources(args, sources, evaluator, grid_seed):
    """A row of metrics per source ``(name, seed, grid stem, pipeline or folder, sampling kwargs)``, all on
    the same noise; a sample grid for the sources without a seed and those of ``grid_seed``."""
    rows = []
    for name, seed, stem, pipe, kwargs in tqdm(sources, desc="evaluating"):
        if isinstance(pipe, str):
            pipe = load_pipeline(pipe)
        images, labels = sample_per_class(pipe, args.samples_per_class, seed=EVALUATION_SEED, **kwargs)
        rows.append({"run": name, "seed": seed, **evaluator(images, labels)})
        if seed in (None, grid_seed):
            save_grid(images, os.path.join(args.output_dir, "grids", f"{stem}.png"))
    return rows


def run_sources(args, runs):
    """Every run as a source, its grid named after its folder under ``<output_dir>/runs``."""
    runs_dir = os.path.join(args.output_dir, "runs")
    return [
        (run["name"], run["seed"], os.path.relpath(run["dir"], runs_dir).replace(os.sep, "_"), run["dir"], {})
        for run in runs
    ]


def real_digits_evaluator(paths):
    """The judge trained on half 1: the Frechet reference is that half; the real-data row is the other half."""
    torch.set_num_threads(THREADS)
    diffusers_logging.disable_progress_bar()  # one bar for the whole evaluation instead of one per pipeline load
    images, labels, half = load_data()
    images = (images + 1) / 2
    evaluator = Evaluator(paths["judge"], paths["reward"], images[half == 1])
    real_row = {"run": "real digits (the other half)", "seed": None, **evaluator(images[half == 0], labels[half == 0])}
    return evaluator, real_row


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


def write_results(args, rows):
    """``results.md`` (mean ± std over seeds, then every run) and ``results.json``; prints the summary."""
    summary = summarize(rows)
    table = markdown_table(summary, rows)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"settings": vars(args), "summary": summary, "runs": rows}, f, indent=2)
    print(table.split("\n\nPer run:")[0])
    return summary


def train_and_evaluate(args, paths, warmups, finetunes, guidance_scales):
    """Train ``plan_runs``' runs, stage 1 then stage 2, score them with the reference rows (the real digits, the
    teacher at ``guidance_scales``) on the same noise, write the results; returns the rows."""
    train_all(args, paths, warmups, "stage 1: the warm starts")
    train_all(args, paths, finetunes, "stage 2: each method")
    evaluator, real_row = real_digits_evaluator(paths)
    sources = teacher_sources(paths, args.teacher_sampling_steps, guidance_scales)
    rows = [real_row] + evaluate_sources(
        args, sources + run_sources(args, warmups + finetunes), evaluator, args.seeds[0]
    )
    write_results(args, rows)
    return rows


def main(argv=None):
    args = parse_args(argv)
    paths = prepare(args.output_dir, args.teacher_steps, args.classifier_steps)
    runs_dir = os.path.join(args.output_dir, "runs")
    plans = [plan_runs(args, runs_dir, seed, args.real_guidance_scale, [args.sensitivity]) for seed in args.seeds]
    warmups, finetunes = [run for plan in plans for run in plan[0]], [run for plan in plans for run in plan[1]]
    train_and_evaluate(args, paths, warmups, finetunes, [args.real_guidance_scale])
    print(
        f"\nWrote {os.path.join(args.output_dir, 'results.md')} and the sample grids in "
        f"{os.path.join(args.output_dir, 'grids')}."
    )


if __name__ == "__main__":
    pin_cpu_arithmetic("examples.digits.demo")
    main()
