import csv
import math

import pytest
import torch

from examples.toy2d import study
from examples.toy2d.study import (
    FAVOURED,
    MEANS,
    MODE_CLASS,
    MODE_STD,
    evaluate,
    selective_reward,
    sliced_wasserstein,
    teacher_samples,
    teacher_x0,
)


def _log_density(x_t, sigma, log_prior):
    """log p_t(x_t) of the noised mixture, written independently of the denoiser."""
    scale = 1 - sigma[:, None]
    variance = scale**2 * MODE_STD**2 + sigma[:, None] ** 2
    sq = (x_t[:, None, :] - scale[:, :, None] * MEANS).pow(2).sum(-1)
    log_normal = -sq / (2 * variance) - torch.log(2 * math.pi * variance)
    return torch.logsumexp(log_prior.log_softmax(dim=-1) + log_normal, dim=-1)


@pytest.mark.parametrize("which", ["cond", "uncond"])
def test_analytic_denoiser_is_tweedie(which):
    # Tweedie for x_t = a x0 + sigma noise: E[x0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / a.
    gen = torch.Generator().manual_seed(0)
    sigma = torch.rand(64, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    labels = torch.randint(0, 2, (64,), generator=gen)
    x_t = (torch.randn(64, 2, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    if which == "cond":
        log_prior, index = torch.where(MODE_CLASS == labels[:, None], 0.0, -math.inf).double(), 0
    else:
        log_prior, index = torch.zeros(1, 8, dtype=torch.float64), 1
    score = torch.autograd.grad(_log_density(x_t, sigma, log_prior).sum(), x_t)[0]
    tweedie = (x_t + sigma[:, None] ** 2 * score) / (1 - sigma[:, None])
    torch.testing.assert_close(teacher_x0(x_t.detach(), sigma, labels)[index], tweedie.detach())


def test_unguided_teacher_samples_the_data():
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(2).repeat_interleave(2000)
    x = teacher_samples(labels, guidance_scale=1.0, generator=gen)
    distance, nearest = study.distances(x, MEANS).min(dim=1)
    assert (distance < 4 * MODE_STD).float().mean() > 0.99
    assert (MODE_CLASS[nearest] == labels).float().mean() > 0.99  # each class on its own modes
    shares = torch.bincount(nearest, minlength=8).float() / len(x)
    assert (shares - 1 / 8).abs().max() < 0.03
    # spread around each mode is the data's
    assert (x - MEANS[nearest]).std().item() == pytest.approx(MODE_STD, rel=0.1)


def test_selective_reward_favours_the_lower_left_modes():
    assert FAVOURED.sum() == 4 and (MEANS[FAVOURED].sum(dim=1) < 0).all()
    assert torch.bincount(MODE_CLASS[FAVOURED]).tolist() == [2, 2]  # every group can rank its samples
    rewards = selective_reward(MEANS)
    assert (rewards[FAVOURED] == 0).all() and (rewards[~FAVOURED] < -1).all()


def test_evaluate_on_known_sample_sets():
    labels = MODE_CLASS.repeat(50)
    on_modes = MEANS.repeat(50, 1)
    metrics = evaluate(on_modes, labels, on_modes, selective_reward)
    assert metrics["high_reward_mass"] == 0.5 and metrics["modes_covered"] == 8
    assert metrics["off_mode"] == 0 and metrics["ejected"] == 0 and metrics["sw_to_teacher"] == 0
    # all on the favoured modes: half the modes covered, all mass on high reward
    favoured = MEANS[FAVOURED].repeat(100, 1)
    metrics = evaluate(favoured, MODE_CLASS[FAVOURED].repeat(100), on_modes, selective_reward)
    assert metrics["high_reward_mass"] == 1.0 and metrics["modes_covered"] == 4 and metrics["mean_reward"] == 0
    # a blob at the centre is off every mode; a ring at radius 5 is ejected
    metrics = evaluate(torch.zeros(400, 2), labels, on_modes, selective_reward)
    assert metrics["off_mode"] == 1 and metrics["ejected"] == 0 and metrics["modes_covered"] == 0
    metrics = evaluate(2.5 * on_modes, labels, on_modes, selective_reward)
    assert metrics["ejected"] == 1 and metrics["off_mode"] == 1


def test_sliced_wasserstein():
    points = torch.randn(1000, 2, generator=torch.Generator().manual_seed(2))
    assert sliced_wasserstein(points, points[torch.randperm(1000)]) == pytest.approx(0.0, abs=1e-6)
    # a shift by c moves every projection by |c . u|: the mean over directions is |c| * 2 / pi
    shift = torch.tensor([3.0, 4.0])
    assert sliced_wasserstein(points + shift, points, num_projections=4096) == pytest.approx(5 * 2 / math.pi, rel=0.02)


def _train(operator, sensitivity, sharpen, steps, extra=()):
    args = study.parse_args(["--max_train_steps", str(steps), "--sensitivity", str(sensitivity), *extra])
    labels = torch.arange(2).repeat_interleave(500)
    noise = torch.randn(len(labels), 2, generator=torch.Generator().manual_seed(3))
    return study.train(args, operator, sharpen, "selective", 0, noise, labels), labels


def test_amd_run_equals_dmd_run_when_sensitivity_is_zero_and_sharpening_off():
    # Eq. 9 at the level of a whole training run: same seed, s = 0, W = 1 -> the same student.
    dmd, _ = _train("dmd", 0.0, False, steps=8)
    for operator in ("naive", "amd"):
        other, _ = _train(operator, 0.0, False, steps=8)
        torch.testing.assert_close(other[8], dmd[8], atol=1e-4, rtol=0)
    # and the reward does change the run once s > 0
    amd, _ = _train("amd", 0.5, False, steps=8)
    assert (amd[8] - dmd[8]).abs().max() > 1e-3


def test_dmd_moves_the_student_onto_the_data():
    snapshots, labels = _train("dmd", 0.0, False, steps=200)
    reference = MEANS[torch.cat([torch.nonzero(MODE_CLASS == c).flatten().repeat(125) for c in (0, 1)])]
    before = evaluate(snapshots[0], labels, reference, selective_reward)
    after = evaluate(snapshots[200], labels, reference, selective_reward)
    assert before["off_mode"] > 0.95
    assert after["off_mode"] < 0.6 and after["ejected"] < 0.05
    assert after["sw_to_teacher"] < 0.5 * before["sw_to_teacher"]


@pytest.mark.slow
def test_study_writes_plots_and_tables(tmp_path):
    study.main(
        [
            "--max_train_steps",
            "4",
            "--seeds",
            "0",
            "--eval_samples",
            "50",
            "--output_dir",
            str(tmp_path),
            "--num_workers",
            "2",
        ]
    )
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(f"{study.run_name(*run)}_seed0.png" for run in study.RUNS)
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["cfg_teacher_200_steps"] + [study.run_name(*run) for run in study.RUNS]
    assert "Mean over seeds" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    "flags, message",
    [(["--group_size", "1"], "--group_size must be at least 2"), (["--num_groups", "0"], "--num_groups")],
)
def test_bad_flags_exit_with_one_sentence(flags, message, capsys):
    with pytest.raises(SystemExit):
        study.parse_args(flags)
    assert message in capsys.readouterr().err
