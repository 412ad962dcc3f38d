"""The prompt-conditioned rewards (hpsv2, pickscore, clip) on tiny models with random weights, loaded through
the same code as the real ones, offline."""

import huggingface_hub
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from tiny_models import TINY_OPEN_CLIP, register_tiny_open_clip, tiny_clip_folder, tiny_hpsv2_checkpoint
from transformers import CLIPModel, CLIPProcessor

from amd_utils import rewards
from amd_utils.rewards import load_reward, resize_crop_normalize

PROMPTS = ["a cat", "a cat", "a dog", "a cat"]


@pytest.fixture(scope="module")
def hps_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip")
    register_tiny_open_clip(folder)
    return tiny_hpsv2_checkpoint(folder / "HPS_tiny.pt")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return tiny_clip_folder(tmp_path_factory.mktemp("clip") / "clip")


def test_resize_crop_normalize_hand_computed():
    images = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    out = resize_crop_normalize(images, None, (2, 2), [1.0], [2.0])
    torch.testing.assert_close(out, (images[..., 1:3, 2:4] - 1.0) / 2.0)
    assert resize_crop_normalize(torch.rand(1, 3, 40, 60), 20, (20, 20), [0.5] * 3, [0.5] * 3).shape == (1, 3, 20, 20)


def test_hpsv2_is_the_cosine_of_open_clips_embeddings(hps_checkpoint):
    reward = rewards.hpsv2_reward(hps_checkpoint, "unused.pt", "cpu", architecture=TINY_OPEN_CLIP)
    model = open_clip.create_model(TINY_OPEN_CLIP, pretrained=None)
    model.load_state_dict(torch.load(hps_checkpoint, weights_only=True)["state_dict"])
    model.eval()
    _, _, preprocess = open_clip.create_model_and_transforms(TINY_OPEN_CLIP, pretrained=None)
    images = torch.rand(4, 3, 32, 32)  # already at the model's size: open_clip's PIL path only normalizes
    pil = [Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for image in images]
    quantized = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) / 255.0 for p in pil])
    with torch.no_grad():
        image_features = model.encode_image(torch.stack([preprocess(p) for p in pil]), normalize=True)
        text_features = model.encode_text(open_clip.get_tokenizer(TINY_OPEN_CLIP)(PROMPTS), normalize=True)
    expected = (image_features * text_features).sum(-1)
    torch.testing.assert_close(reward(quantized, PROMPTS), expected, atol=1e-5, rtol=1e-4)
    # Any resolution is resized (and padded) to the model's; repeated prompts score alike for the same image.
    big = reward(torch.rand(1, 3, 64, 80).expand(2, -1, -1, -1), ["a cat", "a cat"])
    assert big.shape == (2,) and big[0] == big[1]


def test_clip_and_pickscore_are_logit_scale_times_cosine(clip_folder):
    model, processor = CLIPModel.from_pretrained(clip_folder).eval(), CLIPProcessor.from_pretrained(clip_folder)
    images = torch.rand(4, 3, 32, 32)
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    inputs = processor.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(pixel_values=resize_crop_normalize(images, None, None, mean, std), **inputs).logits_per_image
    for name in ("clip", "pickscore"):
        torch.testing.assert_close(
            load_reward(name, clip_folder)(images, PROMPTS), logits.diagonal(), atol=1e-5, rtol=1e-4
        )


def test_prompt_rewards_fail_offline_with_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setattr(
        huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache")
    )  # offline: conftest.py
    with pytest.raises(
        ValueError, match=r"cannot get the HPSv2 checkpoint HPS_v2.1_compressed.pt .* --reward_model_name_or_path"
    ):
        load_reward("hpsv2")
    with pytest.raises(ValueError, match=r"is not a file: point --reward_model_name_or_path"):
        load_reward("hpsv2", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match=r"cannot load the pickscore reward '/no/such/model'"):
        load_reward("pickscore", "/no/such/model")
