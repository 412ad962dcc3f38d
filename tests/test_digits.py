"""The digits demo and studies: the within-class diversity by hand, the demo, the study and the GAN study on tiny
budgets."""

import json
import os
import subprocess
import sys

import pytest
import torch

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


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_tiny_budget(tmp_path):
    out = tmp_path / "digits"
    flags = ["--output_dir", str(out), "--seeds", "0", "1", "--operators", "dmd", "amd", *TINY_BUDGET]
    result = run_example("examples.digits.demo", flags)
    assert "| amd, sharpening |" in result.stdout

    results = json.loads((out / "results.json").read_text())
    names = [entry["run"] for entry in results["summary"]]
    assert names == [
        "real digits (the other half)", "teacher, 3 steps, w = 1", "student before distillation",
        "teacher, 3 steps, w = 1.5", "teacher, 4 steps, w = 1.5", "dmd warm start", "dmd, no sharpening",
        "dmd, sharpening", "amd, no sharpening", "amd, sharpening",
    ]  # fmt: skip
    runs = [row for row in results["runs"] if row["seed"] is not None]
    assert len(runs) == 2 * 5 and {row["seed"] for row in runs} == {0, 1}
    assert all(
        torch.isfinite(torch.tensor([row[m] for m in ("fd", "accuracy", "mean_reward", "diversity")])).all()
        for row in runs
    )
    assert "| amd, sharpening | 1 |" in (out / "results.md").read_text()

    for stem in ("teacher_full_w1", "student_step0", "dmd_warmup_seed0", "amd_sharpen_seed0", "dmd_nosharpen_seed0"):
        assert (out / "grids" / f"{stem}.png").exists(), stem
    # Stage 2 resumed stage 1's checkpoint and every output folder is a loadable pipeline.
    log = (out / "runs" / "amd_sharpen_seed1.log").read_text()
    assert "Resuming from" in log and "dmd_warmup_seed1/checkpoint-2" in log
    assert (out / "runs" / "amd_sharpen_seed1" / "model_index.json").exists()


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
