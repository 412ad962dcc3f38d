"""Rewards for AMD: ``reward(images, conditions) -> (B,)`` floats, no grad, on the images' device.

``images`` are decoded samples in [0, 1], shape (B, C, H, W); ``conditions`` are what the samples were
generated for (class ids for class-conditional models, prompts for text-to-image). The reward only ranks
samples within a group (Eq. 12), so its scale does not matter.

Built in: ``dinov2`` (the paper's SiT reward: log-probability of the target class under a DINOv2 ImageNet
classifier). Anything else: ``--reward my_module:my_function`` with that signature.
"""

import importlib

import torch
import torch.nn.functional as F


def load_reward(name, model_name_or_path=None, device="cpu"):
    """Return the reward called ``name``: a built-in or ``module:function``."""
    if ":" in name:
        return _import_reward(name)
    if name == "dinov2":
        return dinov2_class_reward(model_name_or_path, device)
    raise ValueError(f"unknown reward {name!r}: use 'dinov2' or 'my_module:my_function' for your own.")


def _import_reward(spec):
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import the reward module {module_name!r} ({error}): is it on PYTHONPATH?") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"the reward module {module_name!r} has no function {function_name!r}.")
    return function


def dinov2_class_reward(model_name_or_path, device):
    """log p(class | image) under a ``Dinov2ForImageClassification``, with the model's own preprocessing
    (resize the shortest edge, center crop, normalize) done on tensors on ``device``."""
    from transformers import AutoImageProcessor, Dinov2ForImageClassification

    try:
        model = Dinov2ForImageClassification.from_pretrained(model_name_or_path).to(device).eval()
        processor = AutoImageProcessor.from_pretrained(model_name_or_path)
    except (OSError, ValueError):  # not on disk, not reachable, or not even a valid Hub id
        raise ValueError(
            f"cannot load the DINOv2 reward {model_name_or_path!r}: it is not on disk and the Hub cannot be "
            "reached, so download it first or point --reward_model_name_or_path at a local copy."
        ) from None
    model.requires_grad_(False)
    size = processor.size["shortest_edge"] if processor.do_resize else None
    crop = (processor.crop_size["height"], processor.crop_size["width"]) if processor.do_center_crop else None
    mean = torch.tensor(processor.image_mean, device=device).reshape(1, -1, 1, 1)
    std = torch.tensor(processor.image_std, device=device).reshape(1, -1, 1, 1)
    channels = model.config.num_channels

    @torch.no_grad()
    def reward(images, class_labels):
        images = images.to(device=device, dtype=torch.float32)
        if images.shape[1] != channels:
            images = images.expand(-1, channels, -1, -1)  # a grayscale model output for an RGB classifier
        if size is not None:
            height, width = images.shape[-2:]
            scale = size / min(height, width)
            images = F.interpolate(images, size=(round(height * scale), round(width * scale)), mode="bicubic", antialias=True)
        if crop is not None:
            top, left = (images.shape[-2] - crop[0]) // 2, (images.shape[-1] - crop[1]) // 2
            images = images[..., top : top + crop[0], left : left + crop[1]]
        logits = model(pixel_values=(images - mean) / std).logits.float()
        labels = torch.as_tensor(class_labels, device=device).reshape(-1, 1)
        return logits.log_softmax(dim=-1).gather(1, labels).squeeze(1)

    return reward
