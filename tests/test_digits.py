"""The digits demo and studies: the within-class diversity by hand, the demo, the study and the GAN study on tiny
budgets."""

import json
import os
import subprocess
import sys

import pytest
import torch

from examples.digits.demo import markdown_table, summarize
from examples.digits.evaluate import within_class_diversity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_BUDGET = ["--teacher_steps", "10", "--classifier_steps", "10", "--warmup_steps", "2", "--finetune_steps", "2",
               "--samples_per_class", "4", "--teacher_sampling_steps", "3"]  # fmt: skip


def run_example(module, flags):
    """``python -m module`` offline; its completed process, after checking that it succeeded."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO}
    result = subprocess.run(
        [sys.executable, "-m", module, *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_within_class_diversity_hand_computed():
    # Class 0: two points 3 apart. Class 1: a 3-4-5 triangle, mean pairwise distance 4.
    images = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]).reshape(5, 1, 1, 2)
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert within_class_diversity(images, labels) == pytest.approx((3.0 + 4.0) / 2)


# The warm start (dmd), then amd with and without sharpening: each has one student update (steps 0 and 5).
SHORT_DEMO = ["--seeds", "0", "--operators", "amd", "--teacher_steps", "40", "--classifier_steps", "40",
              "--warmup_steps", "2", "--finetune_steps", "4", "--samples_per_class", "4",
              "--teacher_sampling_steps", "3"]  # fmt: skip
REFERENCE = os.path.join(REPO, "tests", "digits_short_demo.json")
# The short demo gave the same numbers to the last bit on requirements.txt's newest stack and on requirements-min.txt's
# (torch 2.14.1). Measured against the stored numbers: another trainer seed moves every distilled row by 1e-4 to
# 1e-1 (most by 4e-3 or more); ATen's scalar kernels instead of its AVX2 ones by up to 3.8e-5, MKL's default path
# instead of its pinned AVX2 one by up to 1.3e-5 (both caught), oneDNN's SSE4.1 kernels by 1.9e-7 (not caught here;
# the full demo's 1000 teacher steps amplify it). examples/reproducible.py pins all three.
RELATIVE_TOLERANCE = 1e-5


def test_a_short_demo_reproduces_its_stored_numbers(tmp_path):
    """``python -m examples.digits.demo`` on a short budget: every row's metrics equal the stored ones
    (``UPDATE_DIGITS_REFERENCE=1`` rewrites them, after a change meant to move them), the names, grids and the
    resumed warm start are as the full demo makes them, and every run's output loads as a pipeline."""
    out = tmp_path / "digits"
    result = run_example("examples.digits.demo", ["--output_dir", str(out), *SHORT_DEMO])
    assert "| amd, sharpening |" in result.stdout
    runs = json.loads((out / "results.json").read_text())["runs"]
    if os.environ.get("UPDATE_DIGITS_REFERENCE"):
        with open(REFERENCE, "w") as f:
            json.dump(runs, f, indent=1)
    with open(REFERENCE) as f:
        reference = json.load(f)
    assert [row["run"] for row in runs] == [row["run"] for row in reference] == [
        "real digits (the other half)", "teacher, 3 steps, w = 1", "student before distillation",
        "teacher, 3 steps, w = 1.5", "teacher, 4 steps, w = 1.5", "dmd warm start", "amd, no sharpening",
        "amd, sharpening",
    ]  # fmt: skip
    for row, stored in zip(runs, reference):
        for metric in ("fd", "accuracy", "mean_reward", "diversity"):
            assert row[metric] == pytest.approx(stored[metric], rel=RELATIVE_TOLERANCE), (row["run"], metric)

    for stem in ("teacher_full_w1", "student_step0", "dmd_warmup_seed0", "amd_sharpen_seed0", "amd_nosharpen_seed0"):
        assert (out / "grids" / f"{stem}.png").exists(), stem
    log = (out / "runs" / "amd_sharpen_seed0.log").read_text()
    assert "Resuming from" in log and "dmd_warmup_seed0/checkpoint-2" in log
    assert (out / "runs" / "amd_sharpen_seed0" / "model_index.json").exists()


def test_the_table_gives_mean_and_spread_over_seeds():
    rows = [
        {"run": "real digits", "seed": None, "fd": 7.0, "accuracy": 1.0, "mean_reward": -0.1, "diversity": 2.0},
        *({"run": "amd", "seed": seed, "fd": fd, "accuracy": 0.9, "mean_reward": -0.2, "diversity": 1.0}
          for seed, fd in ((0, 30.0), (1, 34.0))),
    ]  # fmt: skip
    table = markdown_table(summarize(rows), rows).splitlines()
    assert table[2] == "| real digits | 7.0 | 1.000 | -0.100 | 2.000 |"
    assert table[3] == "| amd | 32.0 ± 2.0 | 0.900 ± 0.000 | -0.200 ± 0.000 | 1.000 ± 0.000 |"
    assert "| amd | 1 | 34.0000 | 0.9000 | -0.2000 | 1.0000 |" in table


@pytest.mark.slow
def test_study_runs_on_a_tiny_budget(tmp_path):
    """Two guidance scales, two sensitivities, amd only, 2 steps per stage: names, grids, figures, settings."""
    out = tmp_path / "study"
    flags = ["--output_dir", str(out), "--seeds", "0", "--guidance_scales", "1.5", "3",
             "--sensitivities", "0.25", "0.5", "--operators", "amd", *TINY_BUDGET]  # fmt: skip
    result = run_example("examples.digits.study", flags)
    assert "The study took" in result.stdout

    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["guidance_scales"] == [1.5, 3.0]
    runs = {row["run"] for row in results["runs"] if row["seed"] is not None}
    assert runs == {
        f"w = {w}, {method}" for w in ("1.5", "3") for method in (
            "dmd warm start", "amd, s = 0.25, no sharpening", "amd, s = 0.25, sharpening",
            "amd, s = 0.5, no sharpening", "amd, s = 0.5, sharpening",
        )
    }  # fmt: skip
    teachers = [row["run"] for row in results["runs"] if row["run"].startswith("teacher")]
    assert teachers == ["teacher, 3 steps, w = 1", "teacher, 3 steps, w = 1.5", "teacher, 4 steps, w = 1.5",
                        "teacher, 3 steps, w = 3", "teacher, 4 steps, w = 3"]  # fmt: skip
    # Each run trained at its own guidance scale and sensitivity.
    log = (out / "runs" / "w3" / "amd_s0.25_sharpen_seed0.log").read_text()
    assert "Resuming from" in log and "w3/dmd_warmup_seed0/checkpoint-2" in log
    card = (out / "runs" / "w3" / "amd_s0.25_sharpen_seed0" / "README.md").read_text()
    assert "| `real_guidance_scale` | `3.0` |" in card and "| `sensitivity` | `0.25` |" in card
    for name in ("reward_vs_fd_w1.5.png", "reward_vs_fd_w3.png", "grids/w3_amd_s0.5_sharpen_seed0.png"):
        assert (out / name).exists(), name


@pytest.mark.slow
def test_gan_study_runs_on_a_tiny_budget(tmp_path):
    """One GAN weight pair, one seed: the runs with and without the GAN term, and the GAN runs' real images."""
    out = tmp_path / "gan"
    flags = ["--output_dir", str(out), "--seeds", "0", "--gan_weights", "5e-3,1e-2", *TINY_BUDGET]
    result = run_example("examples.digits.gan_study", flags)
    assert "The study took" in result.stdout

    runs = [row["run"] for row in json.loads((out / "results.json").read_text())["runs"] if row["seed"] is not None]
    assert runs == [
        "dmd warm start", "GAN 0.005/0.01, dmd warm start", "dmd, no sharpening", "amd, sharpening",
        "GAN 0.005/0.01, dmd, no sharpening", "GAN 0.005/0.01, amd, sharpening",
    ]  # fmt: skip
    assert sorted(os.listdir(out / "real_digits")) == [str(label) for label in range(10)]
    gan_runs = out / "runs" / "gan_0.005_0.01"
    assert (gan_runs / "dmd_warmup_seed0" / "checkpoint-2" / "gan_head.safetensors").exists()
    log = (gan_runs / "amd_sharpen_seed0.log").read_text()
    assert "Resuming from" in log and "gan_0.005_0.01/dmd_warmup_seed0/checkpoint-2" in log
    card = (gan_runs / "amd_sharpen_seed0" / "README.md").read_text()
    assert "| `gan_loss_weight` | `0.005` |" in card and "| `fake_gan_loss_weight` | `0.01` |" in card
    assert "gan_loss_weight" not in (out / "runs" / "no_gan" / "amd_sharpen_seed0" / "README.md").read_text()
    table = (out / "discriminator.md").read_text().splitlines()
    assert table[0].startswith("| GAN weights | seed | t | D(real)") and len(table) == 2 + 5  # one warm start, 5 t
