"""train_amd_sdxl.py end to end on a tiny SDXL pipeline and a tiny CLIP reward, on CPU, offline; the LoRA
it writes loads into stock StableDiffusionXLPipeline and samples in 4 steps."""

import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.functional import inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file

from launch import assert_fails_with_one_sentence, assert_same_adapters, launch, with_flags
from tiny_models import tiny_clip_folder, tiny_sdxl_pipeline
from train_amd_sdxl import LORA_TARGET_MODULES

pytestmark = pytest.mark.slow
SCRIPT = "train_amd_sdxl.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    (root / "prompts.txt").write_text("a cat\na dog\n\na cat on a mat\na dog in the snow\n")
    (root / "empty.txt").write_text("\n  \n")
    return {
        "sdxl": tiny_sdxl_pipeline(root / "sdxl"), "reward": tiny_clip_folder(root / "clip"),
        "prompts": str(root / "prompts.txt"), "empty_prompts": str(root / "empty.txt"),
    }  # fmt: skip


def train_args(tiny, output_dir, *extra):
    return [
        "--pretrained_model_name_or_path", tiny["sdxl"], "--prompts_file", tiny["prompts"], "--reward", "clip",
        "--reward_model_name_or_path", tiny["reward"], "--resolution", "16", "--reward_resolution", "32",
        "--output_dir", str(output_dir), "--train_batch_size", "4", "--group_size", "2", "--lora_rank", "4",
        "--lora_alpha", "8", "--fake_update_ratio", "2", "--learning_rate", "1e-2", "--real_guidance_scale", "8",
        "--validation_steps", "2", "--checkpointing_steps", "2", *extra,
    ]  # fmt: skip


def test_the_lora_loads_into_stock_sdxl_and_samples_in_4_steps(tiny, tmp_path):
    out = tmp_path / "out"
    launch(SCRIPT, train_args(tiny, out, "--max_train_steps", "4"))
    for path in ("pytorch_lora_weights.safetensors", "README.md", "validation/step-4.png", "checkpoint-4/pytorch_lora_weights.safetensors",
                 "checkpoint-4/fake_lora.safetensors", "logs"):  # fmt: skip
        assert (out / path).exists(), path
    card = (out / "README.md").read_text()
    assert "LCMScheduler" in card and "timesteps=[999, 749, 499, 249]" in card and "guidance_scale=0" in card

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny["sdxl"])
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    settings = {"num_inference_steps": 4, "timesteps": [999, 749, 499, 249], "guidance_scale": 0, "output_type": "pt"}
    base = pipe("a cat", generator=torch.Generator().manual_seed(0), **settings).images
    pipe.load_lora_weights(str(out))
    student = pipe("a cat", generator=torch.Generator().manual_seed(0), **settings).images
    assert student.shape == (1, 3, 16, 16) and torch.isfinite(student).all()
    assert (student - base).abs().max() > 1e-3

    # The loaded LoRA is the trained student adapter, every layer and its alpha / rank scaling included.
    unet = UNet2DConditionModel.from_pretrained(tiny["sdxl"], subfolder="unet")
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGET_MODULES), unet)
    set_peft_model_state_dict(unet, load_file(str(out / "checkpoint-4/student_lora.safetensors")))
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([999, 500]), torch.randn(2, 77, 64)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)}
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
        loaded = pipe.unet(x, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=1e-4)


def test_resume_continues_at_the_right_step_with_both_adapters_and_optimizers(tiny, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch(SCRIPT, train_args(tiny, straight, "--max_train_steps", "4"))
    launch(SCRIPT, train_args(tiny, resumed, "--max_train_steps", "2"))
    result = launch(SCRIPT, train_args(tiny, resumed, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    assert "Resuming from" in result.stdout + result.stderr and "checkpoint-2" in result.stdout + result.stderr
    assert_same_adapters(straight / "checkpoint-4", resumed / "checkpoint-4")


def test_two_process_run_completes(tiny, tmp_path):
    out = tmp_path / "out"
    result = launch(SCRIPT, train_args(tiny, out, "--max_train_steps", "2"), num_processes=2)
    assert "Num processes: 2" in result.stdout + result.stderr
    assert (out / "checkpoint-2/random_states_1.pkl").exists() and (out / "pytorch_lora_weights.safetensors").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--pretrained_model_name_or_path": "/no/such/model"}, "cannot load an SDXL pipeline from '/no/such/model'"),
        ({"--prompts_file": "empty_prompts"}, "holds no prompts"),
        ({"--group_size": "1"}, "--group_size must be at least 2"),
        ({"--train_batch_size": "3"}, "--train_batch_size 3 is not a multiple of --group_size 2"),
        ({"--reward": "hpsv2", "--reward_model_name_or_path": None}, "cannot get the HPSv2 checkpoint HPS_v2.1_compressed.pt"),
        ({"--operator": "dmd2"}, "argument --operator: invalid choice: 'dmd2'"),
    ],
)
def test_bad_input_exits_with_one_sentence_and_leaves_outputs_alone(tiny, tmp_path, change, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    change = {flag: tiny.get(value, value) if value else value for flag, value in change.items()}  # fixture paths by name
    args = with_flags(train_args(tiny, out, "--max_train_steps", "2", "--report_to", "none"), change)
    assert_fails_with_one_sentence(SCRIPT, args, message, out)
