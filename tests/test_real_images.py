"""Real images for the GAN term (amd_utils.real_images): the resize and crop of diffusers' text-to-image examples
(torchvision's, on PIL images of unusual shapes), captions and class folders, the VAE encoding that the latent cache
only memoizes, the cache's resumption, and one sentence for each bad input."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import PartialState
from diffusers import AutoencoderKL
from PIL import Image
from tiny_models import tiny_captioned_images, tiny_class_folders

import amd_utils.real_images
from amd_utils.real_images import RealImages, resize_and_center_crop


def image_args(**change):
    args = dict(
        train_data_dir=None, dataset_name=None, dataset_split="train", image_column="image", caption_column="text",
        label_column="label", latents_cache_dir=None, pretrained_vae_model_name_or_path=None,
        pretrained_model_name_or_path="base",
    )  # fmt: skip
    args.update(change)
    return SimpleNamespace(**args)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    return tiny_captioned_images(tmp_path_factory.mktemp("real") / "captioned")


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2, latent_channels=4,
        up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, scaling_factor=0.13025,
    ).eval()  # fmt: skip


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize(
    "size", [(24, 18), (18, 30), (16, 16), (33, 17), (17, 33), (40, 16), (16, 41), (9, 13), (1000, 16), (16, 15)]
)
def test_resize_and_center_crop_is_torchvisions(size, mode):
    # diffusers' text-to-image examples: transforms.Resize(resolution, BILINEAR) then CenterCrop(resolution).
    from torchvision import transforms

    rng = np.random.default_rng(sum(size))
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    reference = transforms.Compose(
        [transforms.Resize(16, interpolation=transforms.InterpolationMode.BILINEAR), transforms.CenterCrop(16)]
    )(image)
    ours = resize_and_center_crop(image, 16)
    assert ours.size == (16, 16) and ours.mode == mode
    assert np.array_equal(np.asarray(ours), np.asarray(reference))


def test_captioned_folder_gives_pixels_and_captions(captioned):
    images = RealImages(image_args(train_data_dir=captioned), "caption", 16, 3, None, PartialState(cpu=True))
    assert len(images) == 6 and images.conditions[3] == "a photo number 3"
    inputs, captions = images.batch([3, 0])
    assert inputs.shape == (2, 3, 16, 16) and inputs.dtype == torch.float32 and captions[0] == "a photo number 3"
    expected = np.asarray(resize_and_center_crop(Image.open(f"{captioned}/3.png").convert("RGB"), 16))
    expected = torch.from_numpy(expected / 127.5 - 1).permute(2, 0, 1).half().float()
    torch.testing.assert_close(inputs[0], expected, rtol=0, atol=0)


def test_class_folders_give_labels_and_greyscale_pixels(tmp_path):
    folder = tiny_class_folders(tmp_path / "classes", num_classes=3, per_class=2)
    images = RealImages(image_args(train_data_dir=folder), "label", 8, 1, None, PartialState(cpu=True), num_classes=3)
    assert images.conditions == [0, 0, 1, 1, 2, 2]
    inputs, labels = images.batch([5])
    assert inputs.shape == (1, 1, 8, 8) and labels == [2]
    with pytest.raises(ValueError, match=r"holds 2, not a class of this model \(0 to 1\)"):
        RealImages(image_args(train_data_dir=folder), "label", 8, 1, None, PartialState(cpu=True), num_classes=2)


def test_the_cache_changes_nothing_but_the_time(captioned, tiny_vae, tmp_path, monkeypatch):
    # Each image's posterior sample is drawn with its index as the seed, and kept in float16, cached or not.
    monkeypatch.setattr(amd_utils.real_images, "CACHE_SHARD_SIZE", 4)
    state = PartialState(cpu=True)
    on_the_fly = RealImages(image_args(train_data_dir=captioned), "caption", 16, 3, tiny_vae, state)
    cache = tmp_path / "cache"
    cached = RealImages(image_args(train_data_dir=captioned, latents_cache_dir=str(cache)), "caption", 16, 3, tiny_vae,
                        state)  # fmt: skip
    assert sorted(p.name for p in cache.iterdir()) == [
        "cache_info.json", "latents-00000.safetensors", "latents-00001.safetensors"
    ]  # fmt: skip
    indices = [5, 0, 3, 3]
    fly, _ = on_the_fly.batch(indices)
    assert fly.shape == (4, 4, 8, 8)
    torch.testing.assert_close(cached.batch(indices)[0], fly, rtol=0, atol=0)
    torch.testing.assert_close(on_the_fly.batch(indices)[0], fly, rtol=0, atol=0)  # the same draw at every step
    assert torch.equal(fly[2], fly[3]) and not torch.equal(fly[0], fly[1])
    scaled = (
        tiny_vae.encode(
            torch.from_numpy(
                np.asarray(resize_and_center_crop(Image.open(f"{captioned}/0.png").convert("RGB"), 16)) / 127.5 - 1
            )
            .permute(2, 0, 1)[None]
            .float()
        ).latent_dist.sample(torch.Generator().manual_seed(0))
        * 0.13025
    )
    torch.testing.assert_close(fly[1:2], scaled.half().float(), rtol=0, atol=0)


def test_a_cache_fill_resumes_where_it_stopped(captioned, tiny_vae, tmp_path, monkeypatch):
    monkeypatch.setattr(amd_utils.real_images, "CACHE_SHARD_SIZE", 2)
    args = image_args(train_data_dir=captioned, latents_cache_dir=str(tmp_path / "cache"))
    first = RealImages(args, "caption", 16, 3, tiny_vae, PartialState(cpu=True))
    whole = first.batch(range(6))[0]
    (tmp_path / "cache" / "latents-00001.safetensors").unlink()  # as if the fill had been killed there
    (tmp_path / "cache" / "latents-00001.safetensors.tmp").write_bytes(b"half a file")
    encoded = []
    original = RealImages.encode
    monkeypatch.setattr(
        RealImages, "encode", lambda self, indices: encoded.append(list(indices)) or original(self, indices)
    )
    again = RealImages(args, "caption", 16, 3, tiny_vae, PartialState(cpu=True))
    assert encoded == [[2, 3]]
    torch.testing.assert_close(again.batch(range(6))[0], whole, rtol=0, atol=0)


def test_a_cache_of_other_settings_is_refused(captioned, tiny_vae, tmp_path):
    args = image_args(train_data_dir=captioned, latents_cache_dir=str(tmp_path / "cache"))
    RealImages(args, "caption", 16, 3, tiny_vae, PartialState(cpu=True))
    with pytest.raises(ValueError, match=r"holds other images or encodings \(its resolution differ\): give another"):
        RealImages(args, "caption", 32, 3, tiny_vae, PartialState(cpu=True))


def test_bad_inputs_get_one_sentence(captioned, tmp_path):
    state = PartialState(cpu=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"--train_data_dir '.*empty' holds no images: give a folder of image files"):
        RealImages(image_args(train_data_dir=str(tmp_path / "empty")), "caption", 16, 3, None, state)
    with pytest.raises(ValueError, match=r"has no column 'caption' \(it has image, text\): name one with "
                                         r"--caption_column, or give the folder a metadata.jsonl"):  # fmt: skip
        RealImages(image_args(train_data_dir=captioned, caption_column="caption"), "caption", 16, 3, None, state)
    with pytest.raises(ValueError, match=r"has no column 'label' \(it has image, text\): name one with --label_column"):
        RealImages(image_args(train_data_dir=captioned), "label", 16, 3, None, state, num_classes=10)
    with pytest.raises(ValueError, match=r"cannot load the dataset 'no-such-user/no-such-images'"):
        RealImages(image_args(dataset_name="no-such-user/no-such-images"), "caption", 16, 3, None, state)
