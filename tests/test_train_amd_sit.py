"""train_amd_sit.py end to end on a tiny pixel-space SiT and a tiny DINOv2 reward, on CPU, offline."""

import os

import pytest
import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel
from peft import LoraConfig
from peft.functional import inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file

from amd_utils.pipeline_sit import use_sit_time_embedding
from launch import assert_fails_with_one_sentence, assert_same_adapters, checkpoint_adapters, launch, with_flags
from tiny_models import tiny_dinov2_classifier, tiny_sit_pipeline

pytestmark = pytest.mark.slow
SCRIPT = "train_amd_sit.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"sit": tiny_sit_pipeline(root / "sit"), "reward": tiny_dinov2_classifier(root / "reward")}


def train_args(tiny, output_dir, *extra):
    return [
        "--pretrained_model_name_or_path", tiny["sit"], "--reward", "dinov2", "--reward_model_name_or_path", tiny["reward"],
        "--output_dir", str(output_dir), "--train_batch_size", "8", "--group_size", "4", "--lora_rank", "4",
        "--fake_update_ratio", "2", "--learning_rate", "1e-3", "--real_guidance_scale", "2.0",
        "--validation_class_labels", "0", "1", "2", "3", "--report_to", "tensorboard", *extra,
    ]  # fmt: skip


def test_trains_saves_and_the_output_loads_and_samples(tiny, tmp_path):
    out = tmp_path / "out"
    launch(SCRIPT, train_args(tiny, out, "--max_train_steps", "6", "--validation_steps", "3", "--checkpointing_steps", "3"))
    for path in ("model_index.json", "pipeline_sit.py", "transformer", "scheduler", "student_lora/adapter_model.safetensors",
                 "student_lora/adapter_config.json", "README.md", "validation/step-6.png", "checkpoint-6/fake_lora.safetensors"):  # fmt: skip
        assert (out / path).exists(), path
    assert os.listdir(out / "logs")  # tensorboard events

    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    assert pipe.config.default_sigmas == [1.0, 0.75, 0.5, 0.25] and pipe.scheduler.config.stochastic_sampling
    images = pipe(class_labels=[0, 5, 9], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()
    assert pipe.scheduler.sigmas.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]  # the student's 4 steps

    # The student moved away from the base, and the LoRA alone on the base is the merged student.
    base = DiTTransformer2DModel.from_pretrained(tiny["sit"], subfolder="transformer")
    merged = pipe.transformer
    assert any(not torch.equal(p, q) for p, q in zip(base.state_dict().values(), merged.state_dict().values()))
    inject_adapter_in_model(LoraConfig.from_pretrained(str(out / "student_lora")), base)
    set_peft_model_state_dict(base, load_file(str(out / "student_lora/adapter_model.safetensors")))
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.8]), torch.tensor([1, 2])
    use_sit_time_embedding(base)
    torch.testing.assert_close(base(x, timestep=t, class_labels=y).sample, merged(x, timestep=t, class_labels=y).sample, atol=1e-5, rtol=1e-4)


def test_resume_continues_at_the_right_step_with_both_adapters_and_optimizers(tiny, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ("--validation_steps", "100", "--checkpointing_steps", "3")
    launch(SCRIPT, train_args(tiny, straight, "--max_train_steps", "6", *common))
    launch(SCRIPT, train_args(tiny, resumed, "--max_train_steps", "3", *common))
    result = launch(SCRIPT, train_args(tiny, resumed, "--max_train_steps", "6", "--resume_from_checkpoint", "latest", *common))
    assert "Resuming from" in result.stdout + result.stderr and "checkpoint-3" in result.stdout + result.stderr
    assert sorted(os.listdir(resumed)).count("checkpoint-6") == 1
    # 3 + 3 steps after a resume land exactly where 6 uninterrupted steps do: adapters, Adam moments,
    # schedulers and random state were all restored (a fresh optimizer would take different steps).
    assert_same_adapters(straight / "checkpoint-6", resumed / "checkpoint-6")
    student_3, student_6 = (checkpoint_adapters(resumed / f"checkpoint-{step}")["student"] for step in (3, 6))
    assert any(not torch.equal(v, student_3[k]) for k, v in student_6.items())


def test_two_process_run_completes(tiny, tmp_path):
    out = tmp_path / "out"
    result = launch(SCRIPT, train_args(tiny, out, "--max_train_steps", "4", "--validation_steps", "4", "--checkpointing_steps", "2"), num_processes=2)
    assert "Num processes: 2" in result.stdout + result.stderr
    assert (out / "checkpoint-4/random_states_1.pkl").exists() and (out / "model_index.json").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--pretrained_model_name_or_path": "/no/such/model"}, "cannot load a DiT transformer from '/no/such/model'"),
        ({"--group_size": "1"}, "--group_size must be at least 2"),
        ({"--train_batch_size": "6"}, "--train_batch_size 6 is not a multiple of --group_size 4"),
        ({"--reward": "no_such_module:score"}, "cannot import the reward module 'no_such_module'"),
        ({"--reward": "hpsv9"}, "unknown reward 'hpsv9'"),
        ({"--reward_model_name_or_path": "/no/such/reward"}, "cannot load the DINOv2 reward '/no/such/reward'"),
        ({"--student_timesteps": "0.5"}, "--student_timesteps must rise from 0"),
    ],
)
def test_bad_input_exits_with_one_sentence_and_leaves_outputs_alone(tiny, tmp_path, change, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    args = with_flags(train_args(tiny, out, "--max_train_steps", "2"), change)
    assert_fails_with_one_sentence(SCRIPT, args, message, out)
