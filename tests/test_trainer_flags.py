"""The three trainers, in-process on tiny models (CPU, fp32, same seed): flags that must not change the math give the
same adapters as the plain path, flags that must change it do, faults are survived or stop the run cleanly,
and bad input is refused with one sentence before anything is written."""

import json
import os
import sys

import pytest
import torch
from launch import (
    checkpoint_adapters,
    sdxl_args,
    sit_args,
    tensorboard_scalars,
    train_in_process,
    wan_args,
    wan_streaming_args,
    with_flags,
)
from safetensors.torch import load_file
from tiny_models import tiny_class_folders

import amd_utils.training
import train_amd_sdxl
import train_amd_sit
import train_amd_wan
import train_amd_wan_streaming

TRAINERS = {
    "sit": (train_amd_sit, sit_args, "tiny_sit"),
    "sdxl": (train_amd_sdxl, sdxl_args, "tiny_sdxl"),
    "wan": (train_amd_wan, wan_args, "tiny_wan"),
    "wan_streaming": (train_amd_wan_streaming, wan_streaming_args, "tiny_wan"),
}
REWARDS_MODULE = """
import torch

def mean_pixel(images, conditions):
    return images.flatten(1).mean(dim=1)

def nan_for_first(images, conditions):  # a reward model that fails on one sample of every batch
    rewards = images.flatten(1).mean(dim=1)
    rewards[0] = float("nan")
    return rewards

def one_for_the_batch(images, conditions):
    return images.mean().reshape(1)

def a_list(images, conditions):
    return images.flatten(1).mean(dim=1).tolist()
"""


@pytest.fixture(params=sorted(TRAINERS))
def trainer(request):
    """(trainer module, its flags for the tiny fixture); the tiny models are built once per session."""
    module, make_args, fixture = TRAINERS[request.param]
    tiny = request.getfixturevalue(fixture)
    return module, lambda output_dir, *extra: make_args(tiny, output_dir, *extra)


@pytest.fixture(scope="module")
def rewards_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rewards")
    (folder / "rewards_for_tests.py").write_text(REWARDS_MODULE)
    sys.path.insert(0, str(folder))
    yield "rewards_for_tests"
    sys.path.remove(str(folder))


def adapters_after(trainer, output_dir, steps, *flags):
    """Train ``steps`` steps (both adapters updated every step) and return the adapters checkpointed at the end."""
    module, args = trainer
    train_in_process(
        module,
        args(output_dir, "--max_train_steps", steps, "--checkpointing_steps", steps, "--fake_update_ratio", 1, *flags),
    )
    return checkpoint_adapters(output_dir / f"checkpoint-{steps}")


def fake_loss_module(module):
    """The module whose ``weighted_denoising_loss`` a trainer calls: the streaming trainer's fake losses are
    train_amd_wan's."""
    return train_amd_wan if module is train_amd_wan_streaming else module


def max_difference(a, b, name):
    return max((a[name][key] - b[name][key]).abs().max().item() for key in a[name])


# ---------------------------------------------------------------- flags that must not change the math


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_gradient_checkpointing_gives_the_same_adapters(trainer, tmp_path, precision):
    # Recomputing a checkpointed forward is the same float computation as keeping it: exactly equal on CPU, in
    # float32 and under bf16 autocast with the frozen weights in bf16 (the adapters stay float32).
    # Before the fix the student's recomputation ran through the fake adapter (student off by ~1e-2 here): the second
    # step shows it, the first one's fake adapter being still the base.
    flags = ("--mixed_precision", precision)
    plain = adapters_after(trainer, tmp_path / "plain", 2, *flags)
    checkpointed = adapters_after(trainer, tmp_path / "checkpointed", 2, *flags, "--gradient_checkpointing")
    for name in ("student", "fake"):
        assert max_difference(plain, checkpointed, name) == 0.0, name
        assert all(value.dtype == torch.float32 for value in checkpointed[name].values())


def test_zero_sensitivity_is_dmd(trainer, tmp_path):
    # Eq. 9: with s = 0, alpha = beta = 1. naive then computes exactly DMD's expression; amd sums the DM and CA
    # terms in another order, which rounds differently in float32 (1e-7 relative). Adam divides each gradient by
    # the root of its second moment plus epsilon, so a rounding difference in a gradient element near 0 moves the
    # weight by up to lr * difference / epsilon: at Adam's default 1e-8 that reached 3.4e-3 with diffusers 0.34
    # (1.9e-5 with 0.42); epsilon 1e-4 keeps it to 4.8e-6 and 7e-9.
    flags = ("--no_sharpen", "--adam_epsilon", "1e-4")
    dmd = adapters_after(trainer, tmp_path / "dmd", 3, "--operator", "dmd", *flags)
    for operator, tolerance in (("naive", 0.0), ("amd", 2e-5)):
        same = adapters_after(trainer, tmp_path / operator, 3, "--operator", operator, "--sensitivity", 0, *flags)
        for name in ("student", "fake"):
            assert max_difference(dmd, same, name) <= tolerance, (operator, name)


def test_resume_lands_where_an_uninterrupted_run_does(trainer, tmp_path):
    module, args = trainer
    straight = adapters_after(trainer, tmp_path / "straight", 4)
    resumed = tmp_path / "resumed"
    common = ("--fake_update_ratio", 1, "--checkpointing_steps", 2)
    train_in_process(module, args(resumed, "--max_train_steps", 2, *common))
    (resumed / "tmp-checkpoint-3").mkdir()  # what a run killed while saving leaves: 'latest' must skip it
    train_in_process(module, args(resumed, "--max_train_steps", 4, "--resume_from_checkpoint", "latest", *common))
    # Adapters, Adam moments, schedules and random state were all restored: a fresh optimizer or another
    # noise draw would land elsewhere.
    again = checkpoint_adapters(resumed / "checkpoint-4")
    for name in ("student", "fake"):
        assert max_difference(straight, again, name) == 0.0, name


def test_checkpoints_total_limit_keeps_the_newest(tiny_sit, tmp_path):
    # The training loop's bookkeeping (amd_utils.training.TrainingLoop), the same for every trainer: one shows it.
    out = tmp_path / "out"
    train_in_process(
        train_amd_sit,
        sit_args(tiny_sit, out, "--max_train_steps", 4, "--checkpointing_steps", 1, "--checkpoints_total_limit", 2),
    )
    assert sorted(d for d in os.listdir(out) if "checkpoint" in d) == ["checkpoint-3", "checkpoint-4"]


def test_reward_none_runs_plain_dmd_without_scoring(trainer, tmp_path, rewards_module):
    # --reward none is DMD2's cost: no decode, no reward. Its adapters are those of a dmd run whose
    # reward is ignored (no sharpening, the operator ignores advantages).
    scored = adapters_after(
        trainer, tmp_path / "scored", 2, "--operator", "dmd", "--no_sharpen", "--reward", f"{rewards_module}:mean_pixel"
    )
    unscored = adapters_after(trainer, tmp_path / "none", 2, "--operator", "dmd", "--no_sharpen", "--reward", "none")
    for name in ("student", "fake"):
        assert max_difference(scored, unscored, name) == 0.0, name


# ---------------------------------------------------------------- flags that must change it


def test_sensitivity_changes_the_student_and_sharpening_the_fake(trainer, tmp_path):
    plain = adapters_after(trainer, tmp_path / "plain", 2, "--sensitivity", 0.5, "--no_sharpen")
    zero = adapters_after(trainer, tmp_path / "zero", 2, "--sensitivity", 0, "--no_sharpen")
    sharpened = adapters_after(trainer, tmp_path / "sharpened", 2, "--sensitivity", 0.5, "--sharpen")
    assert max_difference(zero, plain, "student") > 1e-4
    assert max_difference(plain, sharpened, "fake") > 1e-4


# ---------------------------------------------------------------- faults


def test_a_nan_reward_gets_advantage_zero_and_training_goes_on(trainer, tmp_path, rewards_module):
    out = tmp_path / "out"
    adapters = adapters_after(
        trainer, out, 3, "--reward", f"{rewards_module}:nan_for_first", "--report_to", "tensorboard"
    )
    assert all(torch.isfinite(value).all() for name in adapters for value in adapters[name].values())
    logs = tensorboard_scalars(out)
    assert logs["reward/nonfinite"] == [1.0, 1.0, 1.0] and all(map(torch.isfinite, torch.tensor(logs["reward/mean"])))
    assert logs["skipped/student"][-1] == 0 and logs["skipped/fake"][-1] == 0


@pytest.mark.parametrize("broken", ["student", "fake"])
def test_a_non_finite_loss_skips_that_adapters_update(trainer, tmp_path, monkeypatch, broken):
    module, args = trainer
    loss_function = "student_loss" if broken == "student" else "weighted_denoising_loss"
    owner = fake_loss_module(module) if broken == "fake" else module
    original = getattr(owner, loss_function)
    monkeypatch.setattr(owner, loss_function, lambda *a, **k: original(*a, **k) * float("nan"))
    out = tmp_path / "out"
    train_in_process(
        module,
        args(
            out,
            "--max_train_steps",
            4,
            "--fake_update_ratio",
            1,
            "--checkpointing_steps",
            2,
            "--report_to",
            "tensorboard",
        ),
    )
    at_2, at_4 = checkpoint_adapters(out / "checkpoint-2"), checkpoint_adapters(out / "checkpoint-4")
    healthy = "fake" if broken == "student" else "student"
    assert max_difference(at_2, at_4, broken) == 0.0 and max_difference(at_2, at_4, healthy) > 0
    assert all(not value.any() for key, value in at_4[broken].items() if "lora_B" in key)  # still at its start, B = 0
    optimizer_file = "optimizer.bin" if broken == "student" else "optimizer_1.bin"  # prepared student first
    assert torch.load(out / "checkpoint-4" / optimizer_file, weights_only=False)["state"] == {}  # no Adam moments
    logs = tensorboard_scalars(out)
    assert logs[f"skipped/{broken}"] == [1.0, 2.0, 3.0, 4.0] and logs[f"skipped/{healthy}"][-1] == 0


def test_too_many_non_finite_steps_in_a_row_stop_the_run(tiny_sit, tmp_path, monkeypatch):
    # The count of skipped updates (amd_utils.training.AdapterUpdates) is every trainer's: one shows it. That each
    # trainer's losses reach it is test_a_non_finite_loss_skips_that_adapters_update's.
    original = train_amd_sit.weighted_denoising_loss
    monkeypatch.setattr(train_amd_sit, "weighted_denoising_loss", lambda *a, **k: original(*a, **k) * float("inf"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        train_in_process(
            train_amd_sit,
            sit_args(tiny_sit, out, "--max_train_steps", 10, "--checkpointing_steps", 2, "--max_nonfinite_steps", 3),
        )
    message = str(stop.value.code)
    assert message.startswith(
        "stopped at step 3: the fake adapter's loss or gradient was not finite for 3 updates in a row"
    )
    assert message.endswith(f"the last good checkpoint: {out / 'checkpoint-2'}.")


# ---------------------------------------------------------------- DMD2's GAN term (SDXL and SiT)


@pytest.fixture(params=["sdxl", "sit"])
def gan_trainer(request):
    """(trainer module, its flags for the tiny fixture, the flags of the GAN term on the fixture's real images)."""
    module, make_args, fixture = TRAINERS[request.param]
    tiny = request.getfixturevalue(fixture)
    return module, lambda output_dir, *extra: make_args(tiny, output_dir, *extra), ("--train_data_dir", tiny["images"])


def gan_state_after(trainer, output_dir, steps, *flags):
    """``adapters_after`` plus the GAN head, under the key "head"."""
    adapters = adapters_after(trainer, output_dir, steps, *flags)
    return {**adapters, "head": load_file(str(output_dir / f"checkpoint-{steps}" / "gan_head.safetensors"))}


def test_zero_gan_weights_are_the_plain_path(gan_trainer, tmp_path):
    module, args, real = gan_trainer
    plain = adapters_after((module, args), tmp_path / "plain", 3)
    zero = adapters_after(
        (module, args), tmp_path / "zero", 3, "--gan_loss_weight", 0, "--fake_gan_loss_weight", 0, *real
    )
    for name in ("student", "fake"):
        assert max_difference(plain, zero, name) == 0.0, name
    assert not (tmp_path / "zero" / "checkpoint-3" / "gan_head.safetensors").exists()


def test_the_generator_gan_weight_moves_the_student_and_not_the_fake(gan_trainer, tmp_path):
    # One step, a student turn: the fake's update reads the student's sample from before the student's update, and
    # the generator's term reaches the student alone (gan.sample_gradient_surrogate), so only the student differs.
    # (Adam's first step is lr * sign(gradient): the weights must differ enough for the GAN term to flip signs.)
    module, args, real = gan_trainer
    low, high = (
        gan_state_after((module, args), tmp_path / str(w), 1, "--gan_loss_weight", w, *real) for w in (1e-3, 1e3)
    )
    assert max_difference(low, high, "student") > 1e-4
    assert max_difference(low, high, "fake") == 0.0 and max_difference(low, high, "head") == 0.0


def test_the_fake_gan_weight_moves_the_fake_and_the_head(gan_trainer, tmp_path):
    module, args, real = gan_trainer
    low, high = (
        gan_state_after((module, args), tmp_path / str(w), 1, "--fake_gan_loss_weight", w, *real) for w in (1e-3, 1e3)
    )
    assert max_difference(low, high, "fake") > 1e-4 and max_difference(low, high, "head") > 1e-4
    assert max_difference(low, high, "student") == 0.0  # the student's update came first
    # The head trains only: the outputs hold the same tensors as a run without the GAN term's.
    adapters_after((module, args), tmp_path / "plain", 1)
    for output in ("pytorch_lora_weights.safetensors", "student_lora/adapter_model.safetensors",
                   "transformer/diffusion_pytorch_model.safetensors"):  # fmt: skip
        if (tmp_path / "plain" / output).exists():
            plain, gan = (load_file(str(tmp_path / run / output)) for run in ("plain", "1000.0"))
            assert {k: v.shape for k, v in gan.items()} == {k: v.shape for k, v in plain.items()}, output


@pytest.mark.parametrize("fake_gan_loss_weight", ["1e-2", "0"])
def test_without_a_prompts_file_the_captions_are_the_prompts(tiny_sdxl, tmp_path, monkeypatch, fake_gan_loss_weight):
    # As in DMD2, whose prompts and real images are LAION's: here the real images' captions, also for validation;
    # with the GAN term off too (its images are then not read).
    encoded = []
    original = train_amd_sdxl.encode_prompts
    monkeypatch.setattr(
        train_amd_sdxl, "encode_prompts", lambda prompts, *rest: encoded.extend(prompts) or original(prompts, *rest)
    )
    args = with_flags(
        sdxl_args(tiny_sdxl, tmp_path / "out", "--max_train_steps", 2, "--fake_gan_loss_weight", fake_gan_loss_weight),
        {"--prompts_file": None, "--train_data_dir": tiny_sdxl["images"], "--validation_steps": "2"},
    )
    train_in_process(train_amd_sdxl, args)
    assert encoded and set(encoded) <= {f"a photo number {i}" for i in range(6)}


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_gradient_checkpointing_gives_the_same_adapters_and_head_with_the_gan(gan_trainer, tmp_path, precision):
    module, args, real = gan_trainer
    flags = ("--gan_loss_weight", 0.5, "--fake_gan_loss_weight", 0.5, *real, "--mixed_precision", precision)
    plain = gan_state_after((module, args), tmp_path / "plain", 2, *flags)
    checkpointed = gan_state_after((module, args), tmp_path / "checkpointed", 2, *flags, "--gradient_checkpointing")
    for name in ("student", "fake", "head"):
        assert max_difference(plain, checkpointed, name) == 0.0, name


def test_resume_with_the_gan_lands_where_an_uninterrupted_run_does(gan_trainer, tmp_path):
    # The head, its Adam moments (the fake optimizer's second parameter group) and the real images drawn.
    module, args, real = gan_trainer
    flags = ("--gan_loss_weight", 0.5, "--fake_gan_loss_weight", 0.5, *real)
    straight = gan_state_after((module, args), tmp_path / "straight", 4, *flags)
    resumed = tmp_path / "resumed"
    common = ("--fake_update_ratio", 1, "--checkpointing_steps", 2, *flags)
    train_in_process(module, args(resumed, "--max_train_steps", 2, *common))
    train_in_process(module, args(resumed, "--max_train_steps", 4, "--resume_from_checkpoint", "latest", *common))
    again = {
        **checkpoint_adapters(resumed / "checkpoint-4"),
        "head": load_file(str(resumed / "checkpoint-4" / "gan_head.safetensors")),
    }
    for name in ("student", "fake", "head"):
        assert max_difference(straight, again, name) == 0.0, name


# ---------------------------------------------------------------- bad input


def sd15_folder(root):
    """What an SD 1.5 pipeline's model_index.json says: one text encoder, no text-time UNet inputs."""
    root.mkdir()
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    return str(root)


BAD_INPUT = [
    # (trainer, {flag: value}, the sentence's key part); values in <> are built by the test
    (
        "sdxl",
        {"--pretrained_model_name_or_path": "/no/such/model"},
        "cannot load an SDXL pipeline from '/no/such/model'",
    ),
    (
        "sdxl",
        {"--pretrained_model_name_or_path": "<sd15>"},
        "is a StableDiffusionPipeline whose text_encoder_2 is missing, not CLIPTextModelWithProjection: give an SDXL "
        "pipeline",
    ),
    (
        "sdxl",
        {"--pretrained_model_name_or_path": "<sit>"},
        "is a SiTPipeline whose unet is missing, not UNet2DConditionModel: give an SDXL pipeline",
    ),
    ("sdxl", {"--prompts_file": "/no/such/prompts.txt"}, "the prompts file '/no/such/prompts.txt' does not exist"),
    (
        "sdxl",
        {"--prompts_file": None},
        "give the prompts with exactly one of --prompts_file or --dataset_name, or --train_data_dir, whose images' "
        "captions are then the prompts",
    ),
    ("wan", {"--prompts_file": None}, "give the prompts with exactly one of --prompts_file or --dataset_name."),
    ("sdxl", {"--prompts_file": "<empty_prompts>"}, "holds no prompts"),
    ("sdxl", {"--group_size": "1"}, "--group_size must be at least 2"),
    ("sdxl", {"--train_batch_size": "3"}, "--train_batch_size 3 is not a multiple of --group_size 2"),
    ("sdxl", {"--sensitivity": "-1"}, "--sensitivity must be >= 0"),
    ("sdxl", {"--reward": "no_such_module:score"}, "cannot import the reward module 'no_such_module'"),
    (
        "sdxl",
        {"--reward": "<rewards>:one_for_the_batch"},
        "the reward must return a tensor of shape (2,), one value per sample, but returned shape (1,)",
    ),
    (
        "sdxl",
        {"--reward": "<rewards>:a_list"},
        "the reward must return a tensor of shape (2,), one value per sample, but returned a list",
    ),
    (
        "sdxl",
        {"--reward": "hpsv2", "--reward_model_name_or_path": None},
        "cannot get the HPSv2 checkpoint HPS_v2.1_compressed.pt",
    ),
    (
        "sdxl",
        {"--reward": "none"},
        "--reward none leaves no advantages to use: it goes with --operator dmd --no_sharpen only",
    ),
    ("sdxl", {"--operator": "dmd2"}, "argument --operator: invalid choice: 'dmd2'"),
    ("sdxl", {"--output_dir": "<file>"}, "is an existing file: give a folder"),
    (
        "sdxl",
        {"--resume_from_checkpoint": "/no/such/checkpoint-2"},
        "--resume_from_checkpoint '/no/such/checkpoint-2' is not a folder",
    ),
    (
        "sdxl",
        {"--resume_from_checkpoint": "latest", "--lora_rank": "8"},
        "the student adapter in <out>/checkpoint-2 has rank 4: resume with the --lora_rank it was trained with",
    ),
    (
        "sdxl",
        {"--use_8bit_adam": True},
        "--use_8bit_adam needs bitsandbytes: pip install bitsandbytes, or drop the flag",
    ),
    ("sdxl", {"--mixed_precision": "bf16"}, "--mixed_precision bf16 needs a device with bfloat16 support"),
    (
        "sdxl",
        {"--gan_loss_weight": "5e-3"},
        "--gan_loss_weight and --fake_gan_loss_weight need real images: give --train_data_dir (a folder of images) "
        "or --dataset_name",
    ),
    ("sdxl", {"--fake_gan_loss_weight": "1e-2", "--train_data_dir": "<empty_dir>"}, "holds no images"),
    (
        "sdxl",
        {"--fake_gan_loss_weight": "1e-2", "--train_data_dir": "<images>", "--caption_column": "caption"},
        "has no column 'caption' (it has image, text): name one with --caption_column",
    ),
    ("sdxl", {"--gan_loss_weight": "-1"}, "--gan_loss_weight must be >= 0"),
    (
        "sit",
        {"--fake_gan_loss_weight": "1e-2", "--train_data_dir": "<eleven_classes>"},
        "column holds 10, not a class of this model (0 to 9)",
    ),
    ("sit", {"--gan_loss_weight": "5e-3", "--train_data_dir": "/no/such/images"}, "is not a folder"),
    (
        "sit",
        {"--resume_from_checkpoint": "latest", "--gan_loss_weight": "5e-3", "--train_data_dir": "<images>"},
        "<out>/checkpoint-2 was trained without the GAN term and this run is with it",
    ),
    (
        "sit",
        {"--pretrained_model_name_or_path": "/no/such/model"},
        "cannot load a SiT / DiT pipeline from '/no/such/model'",
    ),
    (
        "sit",
        {"--pretrained_model_name_or_path": "<sdxl>"},
        "is a StableDiffusionXLPipeline whose transformer is missing, not DiTTransformer2DModel: give a SiT / DiT "
        "pipeline",
    ),
    ("sit", {"--reward": "hpsv9"}, "unknown reward 'hpsv9'"),
    ("sit", {"--reward_model_name_or_path": "/no/such/reward"}, "cannot load the DINOv2 reward '/no/such/reward'"),
    ("sit", {"--student_timesteps": "0.5"}, "--student_timesteps must rise from 0"),
    (
        "sit",
        {"--max_score_noise_level": "1.5"},
        "--min_score_noise_level and --max_score_noise_level need 0 <= min <= max <= 1",
    ),
    ("sit", {"--pretrained_vae_model_name_or_path": "/no/such/vae"}, "cannot load the VAE '/no/such/vae'"),
    (
        "wan_streaming",
        {"--num_frame_per_block": "2"},
        "--num_frames 9 gives 3 latent frames, not a multiple of --num_frame_per_block 2",
    ),
    ("wan_streaming", {"--local_attn_size": "1"}, "--local_attn_size must be -1 or leave room for a block"),
    ("wan_streaming", {"--ema_decay": "1"}, "--ema_decay must be in [0, 1)"),
    (
        "wan_streaming",
        {"--student_model_name_or_path": "/no/such/student"},
        "cannot load the student's transformer from '/no/such/student'",
    ),
    (
        "sit",
        {"--resume_from_checkpoint": "latest", "--fake_lora_rank": "8"},
        "the fake adapter in <out>/checkpoint-2 has rank 4: resume with the --fake_lora_rank it was trained with",
    ),
]


@pytest.mark.parametrize("name, change, message", BAD_INPUT, ids=[f"{t}-{m[:40]}" for t, _, m in BAD_INPUT])
def test_bad_input_exits_with_one_sentence_and_leaves_outputs_alone(
    request, tmp_path, capsys, monkeypatch, rewards_module, name, change, message
):
    module, make_args, fixture = TRAINERS[name]
    tiny = request.getfixturevalue(fixture)
    out = tmp_path / "out"
    if "--resume_from_checkpoint" in change and change["--resume_from_checkpoint"] == "latest":
        train_in_process(module, make_args(tiny, out, "--max_train_steps", 2, "--checkpointing_steps", 2))
    else:
        out.mkdir()
        (out / "keep.txt").write_text("earlier results")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed: importing it fails
    monkeypatch.setattr(amd_utils.training, "is_bf16_available", lambda: False)
    built = {
        "<sd15>": lambda: sd15_folder(tmp_path / "sd15"), "<sit>": lambda: request.getfixturevalue("tiny_sit")["model"],
        "<sdxl>": lambda: request.getfixturevalue("tiny_sdxl")["model"], "<empty_prompts>": lambda: tiny["empty_prompts"],
        "<file>": lambda: str(tmp_path / "file"), "<images>": lambda: tiny["images"],
        "<empty_dir>": lambda: (tmp_path / "empty").mkdir() or str(tmp_path / "empty"),
        "<eleven_classes>": lambda: tiny_class_folders(tmp_path / "eleven", num_classes=11, per_class=1),
    }  # fmt: skip
    change = {flag: built[value]() if value in built else value for flag, value in change.items()}
    change = {
        flag: value.replace("<rewards>", rewards_module) if isinstance(value, str) else value
        for flag, value in change.items()
    }
    args = with_flags(make_args(tiny, out, "--max_train_steps", "2"), change)
    before = {path: (out / path).read_bytes() for path in _files(out)} if out.is_dir() else None
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        train_in_process(module, args)
    assert exit.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith(f"{module.SCRIPT}: error: ") and message.replace("<out>", str(out)) in last_line, (
        last_line
    )
    if before is not None:
        assert {path: (out / path).read_bytes() for path in _files(out)} == before


def _files(folder):
    return sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, files in os.walk(folder) for f in files)


@pytest.mark.parametrize(
    "plugin, use_8bit_adam, message",
    [
        ({}, False, r"needs accelerate >= 1\.6 \(this is "),  # accelerate < 1.6 reads no fsdp_version: FSDP1
        ({"fsdp_version": 1}, False, "runs under FSDP2 only: set fsdp_version: 2"),
        ({"fsdp_version": 2}, True, "--use_8bit_adam does not work under FSDP"),
    ],
    ids=["accelerate<1.6", "fsdp1", "8-bit-adam"],
)
def test_fsdp_launches_the_trainer_cannot_run_are_refused_with_one_sentence(
    monkeypatch, plugin, use_8bit_adam, message
):
    # accelerate builds an FSDP plugin only where there is a GPU: an Accelerator that reports one stands in for it.
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    class FSDPAccelerator:
        distributed_type = DistributedType.FSDP
        state = SimpleNamespace(fsdp_plugin=SimpleNamespace(**plugin))

        def __init__(self, **kwargs):
            pass

    monkeypatch.setattr(amd_utils.training, "Accelerator", FSDPAccelerator)
    args = SimpleNamespace(
        mixed_precision=None, report_to="none", output_dir="unused", logging_dir="logs", use_8bit_adam=use_8bit_adam
    )
    with pytest.raises(ValueError, match=message):
        amd_utils.training.make_accelerator(args, allow_fsdp=True)
