"""Every reward sees the image its own library would show it, on non-square frames (480 x 832 Wan videos) too.

Each project transform is compared with the reward library's own transform, built with the reward's published
settings, on a non-square image of random noise (where a resize or crop off by a fraction of a pixel shows). The
libraries resize uint8 images in two passes (PIL, or torchvision on uint8 tensors), rounding and clamping in between,
and the project resizes float tensors: on noise that bicubic's overshoot never takes past black or white (grey levels
72 to 184) they agree to two grey levels (2 / 255 of the [0, 1] range, divided by the smallest std).

ImageReward (``scripts/evaluate.py``) is not compared: it is given PIL images and preprocesses them itself.
"""

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_models import TINY_OPEN_CLIP, register_tiny_open_clip, tiny_clip_folder, tiny_hpsv2_checkpoint
from transformers import (
    BitImageProcessor,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    Dinov2Config,
    Dinov2ForImageClassification,
)

from amd_utils import rewards
from amd_utils.rewards import load_reward, resize_crop_normalize, resize_longest_pad_normalize

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The published preprocessor_config.json of each reward's processor (as AutoImageProcessor reads them).
PROCESSOR_CONFIGS = {
    # PickScore_v1 ships none: PickScore's code loads laion/CLIP-ViT-H-14-laion2B-s32B-b79K's
    "pickscore": (CLIPImageProcessor, {"size": 224, "crop_size": 224, "resample": 3, "image_mean": CLIP_MEAN,
                                       "image_std": CLIP_STD}),
    "clip": (CLIPImageProcessor, {"size": 224, "crop_size": 224, "resample": 3, "image_mean": CLIP_MEAN,
                                  "image_std": CLIP_STD}),  # openai/clip-vit-large-patch14
    "dinov2": (BitImageProcessor, {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
                                   "resample": 3, "image_mean": IMAGENET_MEAN,
                                   "image_std": IMAGENET_STD}),  # facebook/dinov2-large-imagenet1k-1-layer
}  # fmt: skip
PROMPTS = ["a cat", "a dog"]


def noise_images(count, height, width, seed=0):
    """``count`` uint8 RGB noise images (grey levels 72 to 184) as PIL and as the float tensor in [0, 1] a trainer
    would decode."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(72, 185, (count, 3, height, width), generator=generator, dtype=torch.uint8)
    pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in pixels]
    return pil, pixels.float() / 255


def one_grey_level(std):
    return 2 / 255 / min(std)


# ---------------------------------------------------------------------------------------------------- HPSv2


def test_hpsv2_preprocessing_is_open_clips_longest_edge_transform():
    # 300 x 519, about a 480 x 832 frame's shape: 224 columns and round(300 * 224 / 519) = round(129.48) rows.
    pil, images = noise_images(2, 300, 519)
    transform = open_clip.image_transform(224, is_train=False, mean=CLIP_MEAN, std=CLIP_STD, resize_mode="longest")
    expected = torch.stack([transform(image) for image in pil])
    got = resize_longest_pad_normalize(images, 224, CLIP_MEAN, CLIP_STD)
    assert got.shape == expected.shape == (2, 3, 224, 224)
    torch.testing.assert_close(got, expected, atol=one_grey_level(CLIP_STD), rtol=0)
    # The shortest-edge crop this replaces cuts 42% of the frame's width away instead of letterboxing it.
    cropped = resize_crop_normalize(images, 224, (224, 224), CLIP_MEAN, CLIP_STD)
    assert (cropped - expected).abs().max() > 1


def test_hpsv2_preprocessing_is_hpsv2s_resize_max_size_by_hand():
    # hpsv2/src/open_clip/transform.py (tgxs002/HPSv2 866735e) lines 37-49: on the ToTensor output, scale =
    # 8 / max(4, 10); new size (round(3.2), round(8.0)) = (3, 8); pad_h = 5: 2 rows above, 3 below; pad_w = 0.
    images = torch.rand(1, 3, 4, 10, generator=torch.Generator().manual_seed(1))
    mean, std = (0.25, 0.5, 0.75), (0.5, 0.25, 0.125)
    resized = F.interpolate(images, size=(3, 8), mode="bicubic", antialias=True)  # torchvision's F.resize of a tensor
    padded = torch.zeros(1, 3, 8, 8)
    padded[:, :, 2:5] = resized
    expected = (padded - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(resize_longest_pad_normalize(images, 8, mean, std), expected)
    # A square image is resized only; portrait frames are padded left and right.
    assert resize_longest_pad_normalize(torch.rand(1, 3, 16, 16), 8, mean, std).shape == (1, 3, 8, 8)
    portrait = resize_longest_pad_normalize(torch.ones(1, 3, 10, 5), 8, (0, 0, 0), (1, 1, 1))
    assert portrait[..., :2].abs().max() == 0 and portrait[..., -2:].abs().max() == 0 and portrait[..., 2:6].min() > 0.9


@pytest.fixture(scope="module")
def hps_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip")
    register_tiny_open_clip(folder)
    return tiny_hpsv2_checkpoint(folder / "HPS_tiny.pt")


def capture_pixels(monkeypatch, owner, loader, submodule):
    """Patch ``owner.loader`` so that the model it loads records what its ``submodule`` (e.g. the vision tower) is
    given; returns the list the inputs are appended to."""
    seen, load = [], getattr(owner, loader)

    def load_and_watch(*args, **kwargs):
        model = load(*args, **kwargs)
        hook = lambda module, args, kwargs: seen.append(args[0] if args else kwargs["pixel_values"])  # noqa: E731
        getattr(model, submodule).register_forward_pre_hook(hook, with_kwargs=True)
        return model

    monkeypatch.setattr(owner, loader, load_and_watch)
    return seen


def test_hpsv2_reward_preprocesses_a_non_square_frame_as_open_clip_does(hps_checkpoint, monkeypatch):
    seen = capture_pixels(monkeypatch, open_clip, "create_model", "visual")
    reward = rewards.hpsv2_reward(hps_checkpoint, "unused.pt", "cpu", architecture=TINY_OPEN_CLIP)
    config = open_clip.create_model(TINY_OPEN_CLIP, pretrained=None).visual.preprocess_cfg
    transform = open_clip.image_transform(32, is_train=False, mean=config["mean"], std=config["std"],
                                          resize_mode="longest")  # fmt: skip
    pil, images = noise_images(2, 30, 52)
    reward(images, PROMPTS)
    expected = torch.stack([transform(image) for image in pil])
    torch.testing.assert_close(seen[-1], expected, atol=one_grey_level(config["std"]), rtol=0)


# ------------------------------------------------------------------------------- PickScore, CLIP, DINOv2


@pytest.mark.parametrize("name", sorted(PROCESSOR_CONFIGS))
def test_shortest_edge_preprocessing_is_the_processors_own(name):
    processor_class, config = PROCESSOR_CONFIGS[name]
    processor = processor_class(**config)
    size, crop = processor.size["shortest_edge"], (processor.crop_size["height"], processor.crop_size["width"])
    # 300 x 519: transformers truncates the long edge (224 * 519 / 300 = 387.5 -> 387; 256 -> 442.9 -> 442) where
    # rounding would resample the frame on another grid.
    pil, images = noise_images(2, 300, 519)
    expected = processor(images=pil, return_tensors="pt").pixel_values
    got = resize_crop_normalize(images, size, crop, processor.image_mean, processor.image_std)
    assert got.shape == expected.shape == (2, 3, *crop)
    torch.testing.assert_close(got, expected, atol=one_grey_level(processor.image_std), rtol=0)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return tiny_clip_folder(tmp_path_factory.mktemp("clip") / "clip")


@pytest.mark.parametrize("name", ["clip", "pickscore"])
def test_clip_rewards_preprocess_a_non_square_frame_as_their_processor_does(clip_folder, name, monkeypatch):
    seen = capture_pixels(monkeypatch, CLIPModel, "from_pretrained", "vision_model")
    processor = CLIPProcessor.from_pretrained(clip_folder).image_processor
    pil, images = noise_images(2, 30, 52)
    load_reward(name, clip_folder)(images, PROMPTS)
    expected = processor(images=pil, return_tensors="pt").pixel_values
    torch.testing.assert_close(seen[-1], expected, atol=one_grey_level(processor.image_std), rtol=0)


def test_dinov2_reward_preprocesses_a_non_square_image_as_its_processor_does(tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          image_size=16, patch_size=4, num_labels=10)  # fmt: skip
    Dinov2ForImageClassification(config).save_pretrained(tmp_path)
    processor_class, processor_config = PROCESSOR_CONFIGS["dinov2"]
    processor = processor_class(**{**processor_config, "size": {"shortest_edge": 18},
                                   "crop_size": {"height": 16, "width": 16}})  # fmt: skip
    processor.save_pretrained(tmp_path)
    seen = capture_pixels(monkeypatch, Dinov2ForImageClassification, "from_pretrained", "dinov2")
    pil, images = noise_images(2, 30, 52)
    load_reward("dinov2", str(tmp_path))(images, torch.tensor([3, 7]))
    expected = processor(images=pil, return_tensors="pt").pixel_values
    torch.testing.assert_close(seen[-1], expected, atol=one_grey_level(processor.image_std), rtol=0)
