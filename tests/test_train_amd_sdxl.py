"""train_amd_sdxl.py end to end on a tiny SDXL pipeline and a tiny CLIP reward, on CPU, offline; the LoRA
it writes loads into stock StableDiffusionXLPipeline and samples in 4 steps."""

import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from launch import assert_fails_with_one_sentence, assert_processes_agree, assert_survives_sigkill, launch, sdxl_args
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file

from train_amd_sdxl import LORA_TARGET_MODULES

SCRIPT = "train_amd_sdxl.py"


def test_the_lora_loads_into_stock_sdxl_and_samples_in_4_steps(tiny_sdxl, tmp_path):
    tiny = tiny_sdxl
    out = tmp_path / "out"
    launch(SCRIPT, sdxl_args(tiny, out, "--max_train_steps", "4", "--report_to", "tensorboard"))
    for path in ("pytorch_lora_weights.safetensors", "README.md", "validation/step-4.png", "checkpoint-4/pytorch_lora_weights.safetensors",
                 "checkpoint-4/fake_lora.safetensors", "logs"):  # fmt: skip
        assert (out / path).exists(), path
    card = (out / "README.md").read_text()
    assert "LCMScheduler" in card and "timesteps=[999, 749, 499, 249]" in card and "guidance_scale=0" in card
    assert 'weight_name="pytorch_lora_weights.safetensors"' in card  # diffusers 0.34 loads a folder offline only so

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny["model"])
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    settings = {"num_inference_steps": 4, "timesteps": [999, 749, 499, 249], "guidance_scale": 0, "output_type": "pt"}
    base = pipe("a cat", generator=torch.Generator().manual_seed(0), **settings).images
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    student = pipe("a cat", generator=torch.Generator().manual_seed(0), **settings).images
    assert student.shape == (1, 3, 16, 16) and torch.isfinite(student).all()
    assert (student - base).abs().max() > 1e-3

    # The loaded LoRA is the trained student adapter, every layer and its alpha / rank scaling included.
    unet = UNet2DConditionModel.from_pretrained(tiny["model"], subfolder="unet")
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGET_MODULES), unet)
    set_peft_model_state_dict(unet, load_file(str(out / "checkpoint-4/student_lora.safetensors")))
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([999, 500]), torch.randn(2, 77, 64)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)}
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
        loaded = pipe.unet(x, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_both_processes_of_a_two_process_run_end_with_the_same_adapters(tiny_sdxl, tmp_path):
    # Not the adapters of one process at twice the batch: each process draws its own prompts and noise
    # (seeded apart) and ranks its own groups, so the two runs see different samples. DDP averages the two
    # processes' gradients, so their adapters must stay equal, bit for bit. With the GAN term on: its head is a
    # DDP model of its own, its features come from the network's DDP forward, and the generator's term bypasses
    # DDP (amd_utils.gan.sample_gradient_surrogate); each process draws its own real images.
    gan = ["--gan_loss_weight", "0.5", "--fake_gan_loss_weight", "0.5", "--train_data_dir", tiny_sdxl["images"]]
    assert_processes_agree(
        SCRIPT,
        sdxl_args(tiny_sdxl, tmp_path / "out", "--max_train_steps", "3", "--fake_update_ratio", "1", *gan),
        tmp_path / "dump",
    )


@pytest.mark.slow
def test_a_run_killed_at_any_point_resumes_to_the_same_adapters(tiny_sdxl, tmp_path):
    assert_survives_sigkill(
        SCRIPT, sdxl_args(tiny_sdxl, tmp_path / "out"), tmp_path / "out", tmp_path / "straight", steps=6
    )


@pytest.mark.slow
def test_bad_input_on_the_command_line_exits_2_without_a_traceback(tiny_sdxl, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    args = sdxl_args(tiny_sdxl, out, "--prompts_file", tiny_sdxl["empty_prompts"])
    assert_fails_with_one_sentence(SCRIPT, args, "holds no prompts", out)
