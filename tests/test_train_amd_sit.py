"""train_amd_sit.py end to end on a tiny pixel-space SiT and a tiny DINOv2 reward, on CPU, offline."""

import os

import pytest
import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel
from launch import assert_fails_with_one_sentence, assert_processes_agree, assert_survives_sigkill, launch, sit_args
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file

from amd_utils.pipeline_sit import use_sit_time_embedding

SCRIPT = "train_amd_sit.py"


@pytest.mark.slow  # the default tier runs train_amd_sit.py end to end in tests/test_digits.py
def test_trains_saves_and_the_output_loads_and_samples(tiny_sit, tmp_path):
    out = tmp_path / "out"
    launch(
        SCRIPT,
        sit_args(
            tiny_sit,
            out,
            "--max_train_steps",
            "6",
            "--validation_steps",
            "3",
            "--checkpointing_steps",
            "3",
            "--report_to",
            "tensorboard",
        ),
    )
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
    base = DiTTransformer2DModel.from_pretrained(tiny_sit["model"], subfolder="transformer")
    merged = pipe.transformer
    assert any(not torch.equal(p, q) for p, q in zip(base.state_dict().values(), merged.state_dict().values()))
    inject_adapter_in_model(LoraConfig.from_pretrained(str(out / "student_lora")), base)
    set_peft_model_state_dict(base, load_file(str(out / "student_lora/adapter_model.safetensors")))
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.8]), torch.tensor([1, 2])
    use_sit_time_embedding(base)
    torch.testing.assert_close(
        base(x, timestep=t, class_labels=y).sample, merged(x, timestep=t, class_labels=y).sample, atol=1e-5, rtol=1e-4
    )


@pytest.mark.slow
def test_both_processes_of_a_two_process_run_end_with_the_same_adapters(tiny_sit, tmp_path):
    # Not the adapters of one process at twice the batch: each process draws its own class labels and noise
    # (seeded apart) and ranks its own groups, so the two runs see different samples. DDP averages the two
    # processes' gradients, so their adapters must stay equal, bit for bit.
    assert_processes_agree(
        SCRIPT,
        sit_args(tiny_sit, tmp_path / "out", "--max_train_steps", "3", "--fake_update_ratio", "1"),
        tmp_path / "dump",
    )


@pytest.mark.slow
def test_a_run_killed_at_any_point_resumes_to_the_same_adapters(tiny_sit, tmp_path):
    assert_survives_sigkill(
        SCRIPT,
        sit_args(tiny_sit, tmp_path / "out", "--validation_steps", "100"),
        tmp_path / "out",
        tmp_path / "straight",
        steps=8,
    )


@pytest.mark.slow
def test_bad_input_on_the_command_line_exits_2_without_a_traceback(tiny_sit, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    assert_fails_with_one_sentence(
        SCRIPT, sit_args(tiny_sit, out, "--group_size", "1"), "--group_size must be at least 2", out
    )
