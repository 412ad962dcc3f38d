"""The digits demo: its metrics against hand-computed values, and the whole demo on a tiny budget."""

import json
import os
import subprocess
import sys

import pytest
import torch
from scipy.linalg import sqrtm

from examples.digits.evaluate import frechet_distance, within_class_diversity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_frechet_distance_identities():
    torch.manual_seed(0)
    a = torch.randn(500, 6) @ torch.randn(6, 6)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # Same covariance: only the means differ.
    assert frechet_distance(a, a + shift) == pytest.approx(shift.pow(2).sum().item(), rel=1e-8)
    # b = 2a: cov_b = 4 S, tr((S 4S)^(1/2)) = 2 tr(S), so FD = |mu|^2 + tr(S) + 4 tr(S) - 4 tr(S).
    expected = a.double().mean(0).pow(2).sum() + torch.cov(a.double().T).trace()
    assert frechet_distance(a, 2 * a) == pytest.approx(expected.item(), rel=1e-8)


def test_frechet_distance_matches_the_matrix_square_root():
    torch.manual_seed(1)
    a, b = torch.randn(300, 5) @ torch.randn(5, 5), torch.randn(400, 5) @ torch.randn(5, 5) + 1
    cov_a, cov_b = torch.cov(a.double().T).numpy(), torch.cov(b.double().T).numpy()
    expected = (a.double().mean(0) - b.double().mean(0)).pow(2).sum().item() + cov_a.trace() + cov_b.trace()
    expected -= 2 * sqrtm(cov_a @ cov_b).real.trace()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_within_class_diversity_hand_computed():
    # Class 0: two points 3 apart. Class 1: a 3-4-5 triangle, mean pairwise distance 4.
    images = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]).reshape(5, 1, 1, 2)
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert within_class_diversity(images, labels) == pytest.approx((3.0 + 4.0) / 2)


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_tiny_budget(tmp_path):
    out = tmp_path / "digits"
    flags = [
        "--output_dir", str(out), "--teacher_steps", "10", "--classifier_steps", "10", "--warmup_steps", "2",
        "--finetune_steps", "2", "--seeds", "0", "1", "--operators", "dmd", "amd", "--samples_per_class", "4",
        "--teacher_sampling_steps", "3",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO}
    result = subprocess.run(
        [sys.executable, "-m", "examples.digits.demo", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| amd, sharpening |" in result.stdout

    results = json.loads((out / "results.json").read_text())
    names = [entry["run"] for entry in results["summary"]]
    assert names == [
        "real digits (the other half)", "teacher, 3 steps, w = 1", "teacher, 3 steps, w = 1.5", "teacher, 4 steps, w = 1.5",
        "student before distillation", "dmd warm start", "dmd, no sharpening", "dmd, sharpening", "amd, no sharpening",
        "amd, sharpening",
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
