"""train_amd_wan.py on a tiny Wan2.1 pipeline, on CPU, offline: the scheduler it saves gives the student's noise
levels, stock WanPipeline with that scheduler and the LoRA reproduces the trainer's own 4-step sample,
microbatches do not change the math, video rewards, and (slow) the real command line end to end, under DDP and
FSDP."""

import sys

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from launch import (
    assert_fails_with_one_sentence,
    assert_fsdp_launch_fails_with_one_sentence,
    assert_processes_agree,
    assert_same_adapters,
    checkpoint_adapters,
    launch,
    sit_args,
    tensorboard_scalars,
    train_in_process,
    wan_args,
    wan_streaming_args,
)
from safetensors.torch import load_file

import train_amd_wan
import train_amd_wan_streaming
from amd_utils.parameterization import shift_noise_level
from amd_utils.rewards import frame_averaged_reward, load_video_reward

SCRIPT = "train_amd_wan.py"
FSDP_CONFIG = "examples/wan/accelerate_fsdp2.yaml"
VIDEO = {"height": 16, "width": 16, "num_frames": 5, "max_sequence_length": 8}


@pytest.mark.parametrize("num_steps", [1, 2, 4, 6])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 8.0])
def test_the_student_scheduler_gives_the_shifted_noise_levels(tmp_path, num_steps, shift):
    # shift = sN / (s + N - 1), shift_terminal = s / (s + N - 1) give shift_s(1 - k/N) up to the scheduler's
    # sigma_min, where its grid ends instead of 0 (measured: at most 3.6e-4 for N = 4, 1.6e-3 for s = 8, N = 8).
    scheduler = train_amd_wan.student_scheduler(num_steps, shift)
    wanted = shift_noise_level(1 - torch.arange(num_steps, dtype=torch.float64) / num_steps, shift)
    torch.testing.assert_close(scheduler.sigmas[:-1].double(), wanted, atol=1e-3, rtol=0)
    assert scheduler.sigmas[0] == 1.0 and scheduler.sigmas[-1] == 0.0
    assert torch.equal(scheduler.timesteps, scheduler.sigmas[:-1] * 1000)  # what the transformer is given
    # What the output folder holds gives, at set_timesteps(N), exactly the levels the student was trained at.
    scheduler.save_pretrained(tmp_path)
    saved = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path)
    saved.set_timesteps(num_steps)
    assert torch.equal(saved.sigmas, scheduler.sigmas) and saved.config.stochastic_sampling


@pytest.mark.parametrize(
    "config, factors",
    [
        ({"temperal_downsample": [False, True, True]}, (4, 8)),  # diffusers 0.34 writes no scale factors
        ({"temperal_downsample": [False, True, True], "scale_factor_temporal": 4, "scale_factor_spatial": 8}, (4, 8)),
        ({"temperal_downsample": [False, True, True], "scale_factor_temporal": 4, "scale_factor_spatial": 16}, (4, 16)),
    ],
)
def test_vae_scale_factors_on_every_diffusers_version(config, factors):
    from types import SimpleNamespace

    from diffusers.configuration_utils import FrozenDict

    assert train_amd_wan.vae_scale_factors(SimpleNamespace(config=FrozenDict(config))) == factors


def test_stock_wan_pipeline_with_the_saved_scheduler_and_lora_reproduces_the_trainers_sample(tiny_wan, tmp_path):
    out = tmp_path / "out"
    model = train_in_process(train_amd_wan, wan_args(tiny_wan, out, "--max_train_steps", 4, "--fake_update_ratio", 1))
    for path in (
        "pytorch_lora_weights.safetensors",
        "scheduler/scheduler_config.json",
        "README.md",
        "validation/step-4.gif",
    ):
        assert (out / path).exists(), path
    card = (out / "README.md").read_text()
    assert 'subfolder="scheduler"' in card and "num_inference_steps=4" in card and "guidance_scale=1.0" in card
    assert 'weight_name="pytorch_lora_weights.safetensors"' in card  # diffusers 0.34 loads a folder offline only so

    # The trainer's own sample: its student, its noise levels, its sampler, seed 0. WanPipeline's scheduler step
    # takes no generator: it re-noises from the global RNG, so both draw everything from it.
    pipe = WanPipeline.from_pretrained(tiny_wan["model"])
    pipe.set_progress_bar_config(disable=True)
    embeds, _ = pipe.encode_prompt("a cat", do_classifier_free_guidance=False, max_sequence_length=8, device="cpu")
    sigmas = train_amd_wan.student_scheduler(4, 5.0).sigmas
    torch.manual_seed(0)
    expected = train_amd_wan.sample_student(model, embeds, sigmas, (1, 16, 2, 2, 2), "cpu")

    # Stock diffusers, as the model card says.
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(out, subfolder="scheduler")
    settings = {**VIDEO, "num_inference_steps": 4, "guidance_scale": 1.0, "output_type": "latent"}
    torch.manual_seed(0)
    base = pipe("a cat", **settings).frames
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    torch.manual_seed(0)
    student = pipe("a cat", **settings).frames
    torch.testing.assert_close(student, expected, atol=1e-5, rtol=1e-5)
    assert (student - base).abs().max() > 1e-3


def test_a_prompts_embedding_does_not_depend_on_the_prompts_first_seen_with_it(tiny_wan):
    # A resumed run's cache starts empty at another step: were prompts encoded in a batch, "a dog" would get
    # another embedding in its last bits there (measured on transformers 4.48: the resumed Wan runs drifted 1e-7).
    pipe = WanPipeline.from_pretrained(tiny_wan["model"])
    together = train_amd_wan.PromptEmbeddings(pipe, 8, torch.float32)(["a cat", "a dog", "a cat sleeping"], "cpu")
    alone = train_amd_wan.PromptEmbeddings(pipe, 8, torch.float32)(["a dog"], "cpu")
    assert torch.equal(together[1], alone[0])


@pytest.mark.parametrize("streaming", [False, True])
def test_microbatches_give_the_same_gradients_and_adapters(tiny_wan, tmp_path, streaming):
    # Every loss is a per-video mean, so splitting the batch and accumulating gradients is exact up to the order
    # of float sums: the gradient norms agree to float rounding (a microbatch loss not weighted by its share of
    # the batch would be off by 4x). Adam divides by the root of the second moment plus epsilon, which turns a
    # rounding difference in a gradient element near 0 into up to lr * difference / epsilon of the weight, and the
    # next steps' gradients follow: epsilon 1e-4 (not Adam's 1e-8) keeps both within the tolerances on diffusers
    # 0.34 too (measured at 1e-8 there: gradient norms 1.2e-5 relative apart at the third step). The streaming
    # trainer reruns each block's exit step per microbatch, from the rows of its saved cache.
    trainer, make_args = (train_amd_wan_streaming, wan_streaming_args) if streaming else (train_amd_wan, wan_args)
    adapters, logs = {}, {}
    for size in (None, 1):
        out = tmp_path / f"microbatch-{size}"
        flags = ["--max_train_steps", 3, "--fake_update_ratio", 1, "--checkpointing_steps", 3, "--report_to",
                 "tensorboard", "--adam_epsilon", "1e-4"]  # fmt: skip
        train_in_process(trainer, make_args(tiny_wan, out, *flags, *(["--microbatch_size", size] if size else [])))
        adapters[size], logs[size] = checkpoint_adapters(out / "checkpoint-3"), tensorboard_scalars(out)
    for name in ("student", "fake"):
        torch.testing.assert_close(logs[1][f"grad_norm/{name}"], logs[None][f"grad_norm/{name}"], rtol=1e-5, atol=0)
        for key, value in adapters[None][name].items():
            torch.testing.assert_close(adapters[1][name][key], value, atol=2e-5, rtol=0)
        assert any(value.abs().max() > 1e-3 for key, value in adapters[1][name].items() if "lora_B" in key)  # trained


def test_a_separate_teacher_scores_as_the_base_with_adapters_off_would(tiny_wan, tmp_path):
    # --real_score_model_name_or_path naming the base pipeline itself must not change the math; a teacher with
    # other weights must change the student.
    from tiny_models import tiny_wan_pipeline

    adapters = {}
    for teacher in (None, tiny_wan["model"], tiny_wan_pipeline(tmp_path / "other_teacher", seed=1)):
        out = tmp_path / f"teacher-{len(adapters)}"
        flags = ["--max_train_steps", 2, "--fake_update_ratio", 1, "--checkpointing_steps", 2]
        flags += ["--real_score_model_name_or_path", teacher] if teacher else []
        train_in_process(train_amd_wan, wan_args(tiny_wan, out, *flags))
        adapters[teacher] = checkpoint_adapters(out / "checkpoint-2")
    plain, same, other = adapters.values()
    for name in ("student", "fake"):
        for key, value in plain[name].items():
            torch.testing.assert_close(same[name][key], value, atol=1e-6, rtol=0)
    assert max((other["student"][key] - plain["student"][key]).abs().max() for key in plain["student"]) > 1e-4


def test_a_frames_reward_averages_an_image_reward_over_evenly_spaced_frames():
    calls = []

    def brightness(images, prompts):
        calls.append((images.shape, list(prompts)))
        return images.mean(dim=(1, 2, 3))

    frame_values = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])  # frame f has value f / 10
    videos = frame_values.view(1, 9, 1, 1, 1).expand(2, 9, 3, 4, 4).clone()
    videos[1] *= 0.5
    rewards = frame_averaged_reward(brightness, 3, videos, ["a cat", "a dog"])
    assert calls == [((6, 3, 4, 4), ["a cat"] * 3 + ["a dog"] * 3)]  # frames 0, 4, 8 of each video
    torch.testing.assert_close(rewards, torch.tensor([0.4, 0.2]))
    assert load_video_reward("none") is None
    with pytest.raises(ValueError, match="'clip' scores images: give 'frames:clip'"):
        load_video_reward("clip")


def test_a_user_video_reward_gets_the_decoded_videos_and_their_prompts(tiny_wan, tmp_path, monkeypatch):
    (tmp_path / "video_reward.py").write_text(
        "import torch\n"
        "seen = []\n"
        "def motion(videos, prompts):\n"
        "    seen.append((tuple(videos.shape), float(videos.min()), float(videos.max()), list(prompts)))\n"
        "    return (videos[:, 1:] - videos[:, :-1]).abs().flatten(1).mean(dim=1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    train_in_process(
        train_amd_wan, wan_args(tiny_wan, tmp_path / "out", "--max_train_steps", 2, "--reward", "video_reward:motion")
    )
    seen = sys.modules["video_reward"].seen
    assert len(seen) == 3  # the start-up probe, then one call a step
    for shape, low, high, prompts in seen[1:]:
        assert shape == (4, 5, 3, 16, 16) and 0 <= low <= high <= 1
        assert len(prompts) == 4 and prompts[0] == prompts[1] and prompts[2] == prompts[3]  # groups of K = 2


def test_the_command_line_writes_the_lora_scheduler_and_model_card(tiny_wan, tmp_path):
    out = tmp_path / "out"
    launch(SCRIPT, wan_args(tiny_wan, out, "--max_train_steps", "2", "--report_to", "tensorboard"))
    for path in ("pytorch_lora_weights.safetensors", "scheduler/scheduler_config.json", "README.md", "logs",
                 "validation/step-2.gif", "checkpoint-2/pytorch_lora_weights.safetensors", "checkpoint-2/fake_lora.safetensors"):  # fmt: skip
        assert (out / path).exists(), path


@pytest.mark.slow
def test_both_processes_of_a_two_process_run_end_with_the_same_adapters(tiny_wan, tmp_path):
    assert_processes_agree(
        SCRIPT,
        wan_args(tiny_wan, tmp_path / "out", "--max_train_steps", "3", "--fake_update_ratio", "1"),
        tmp_path / "dump",
    )


@pytest.mark.slow
def test_fsdp_trains_and_resumes_as_ddp_does(tiny_wan, tmp_path):
    # The shipped FSDP2 config on 2 CPU processes (tests/fsdp_on_cpu.py lets accelerate shard on CPU). Both
    # processes start from the same adapters and run the same forwards, and FSDP averages gradients as DDP does:
    # the adapters match a 2-process DDP run's, with gradient checkpointing and a separate (sharded) teacher
    # holding the base's weights on top; a checkpoint written under either resumes under the other (the FSDP
    # resume scoring with the base, adapters off) to the adapters of the uninterrupted run.
    flags = ["--max_train_steps", "4", "--fake_update_ratio", "2", "--mixed_precision", "no"]
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    launch(SCRIPT, wan_args(tiny_wan, ddp, *flags), num_processes=2)
    on_top = ["--gradient_checkpointing", "--real_score_model_name_or_path", tiny_wan["model"]]
    result = launch(SCRIPT, wan_args(tiny_wan, fsdp, *flags, *on_top), num_processes=2, config_file=FSDP_CONFIG)
    assert "DistributedType.FSDP" in result.stderr
    for path in ("pytorch_lora_weights.safetensors", "scheduler/scheduler_config.json", "README.md",
                 "validation/step-4.gif", "checkpoint-2/pytorch_lora_weights.safetensors"):  # fmt: skip
        assert (fsdp / path).exists(), path
    for step in (2, 4):
        assert_same_adapters(ddp / f"checkpoint-{step}", fsdp / f"checkpoint-{step}")
    final = [load_file(str(out / "pytorch_lora_weights.safetensors")) for out in (ddp, fsdp)]
    torch.testing.assert_close(final[1], final[0], atol=1e-6, rtol=1e-5)  # the same keys, and values
    for source, config_file in ((ddp, FSDP_CONFIG), (fsdp, None)):
        out = tmp_path / f"resumed-from-{source.name}"
        resume = ["--resume_from_checkpoint", str(source / "checkpoint-2")]
        launch(SCRIPT, wan_args(tiny_wan, out, *flags, *resume), num_processes=2, config_file=config_file)
        assert_same_adapters(ddp / "checkpoint-4", out / "checkpoint-4")


@pytest.mark.slow
def test_8bit_adam_and_the_other_trainers_are_refused_under_fsdp(tiny_wan, tiny_sit, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    wan = wan_args(tiny_wan, out, "--use_8bit_adam")
    message = "--use_8bit_adam does not work under FSDP"
    assert_fsdp_launch_fails_with_one_sentence(SCRIPT, wan, message, out, FSDP_CONFIG)
    message = "FSDP is supported by train_amd_wan.py only"
    assert_fsdp_launch_fails_with_one_sentence("train_amd_sit.py", sit_args(tiny_sit, out), message, out, FSDP_CONFIG)
    # (An FSDP1 config is refused too, but accelerate cannot build its FSDP1 plugin without a GPU to test it here.)


@pytest.mark.slow
def test_bad_input_on_the_command_line_exits_2_without_a_traceback(tiny_wan, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    assert_fails_with_one_sentence(
        SCRIPT, wan_args(tiny_wan, out, "--num_frames", "6"), "--num_frames must be 4k + 1", out
    )
