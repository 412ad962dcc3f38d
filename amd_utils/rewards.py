"""Rewards for AMD: ``reward(images, conditions) -> (B,)`` floats, no grad, on the images' device.

``images`` are decoded samples in [0, 1], shape (B, C, H, W); ``conditions`` are what the samples were
generated for (class ids for class-conditional models, prompts for text-to-image). The reward only ranks
samples within a group (Eq. 12), so its scale does not matter.

Built in:
- ``dinov2``: log-probability of the target class under a DINOv2 ImageNet classifier (the paper's SiT reward);
- ``hpsv2`` (HPSv2.1) and ``hpsv2.0``: the Human Preference Score, open_clip's ViT-H-14 with the official
  checkpoint (the paper's SDXL reward), scored as the cosine of image and prompt embeddings;
- ``pickscore`` and ``clip``: transformers CLIP models, ``logit_scale * cosine``.
Anything else: ``--reward my_module:my_function`` with that signature; ``none`` (plain DMD) scores nothing.
Videos (``load_video_reward``): ``frames:<image reward>`` averages an image reward over a few frames, and
``my_module:my_function`` takes ``(videos (B, F, 3, H, W) in [0, 1], prompts)``.
Every model is loaded once, runs on tensors on ``device`` with its own preprocessing, and fails at start-up with
one sentence when its weights are neither on disk nor reachable. The preprocessing is each reward's own, which matters
on non-square frames (480 x 832 Wan videos): HPSv2 resizes the longest edge and pads
(:func:`resize_longest_pad_normalize`), the transformers models resize the shortest edge and centre-crop
(:func:`resize_crop_normalize`); tests compare both with the libraries' own transforms.
"""

import functools
import importlib
import os

import torch
import torch.nn.functional as F

REWARDS = ("dinov2", "hpsv2", "hpsv2.0", "pickscore", "clip")
DINOV2_CLASSIFIER = "facebook/dinov2-large-imagenet1k-1-layer"  # the paper's SiT reward
HPSV2_REPO = "xswu/HPSv2"
HPSV2_CHECKPOINTS = {"hpsv2": "HPS_v2.1_compressed.pt", "hpsv2.0": "HPS_v2_compressed.pt"}
HPSV2_ARCHITECTURE = "ViT-H-14"
# Default (model, processor) of the transformers CLIP rewards; PickScore ships without a processor.
CLIP_REWARDS = {
    "pickscore": ("yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    "clip": ("openai/clip-vit-large-patch14", "openai/clip-vit-large-patch14"),
}


def load_reward(name, model_name_or_path=None, device="cpu"):
    """Return the reward called ``name``: a built-in (``REWARDS``) or ``module:function``.
    ``model_name_or_path`` overrides the built-in's weights: a folder or Hub id, or for ``hpsv2`` the
    checkpoint file."""
    if name == "none":
        return None
    if ":" in name:
        return _import_reward(name)
    if name == "dinov2":
        return dinov2_class_reward(model_name_or_path or DINOV2_CLASSIFIER, device)
    if name in HPSV2_CHECKPOINTS:
        return hpsv2_reward(model_name_or_path, HPSV2_CHECKPOINTS[name], device)
    if name in CLIP_REWARDS:
        return clip_reward(name, model_name_or_path, device)
    raise ValueError(
        f"unknown reward {name!r}: use one of {', '.join(REWARDS)}, or 'my_module:my_function' for your own."
    )


def load_video_reward(name, model_name_or_path=None, device="cpu", num_frames=4):
    """A reward of videos ``(B, F, 3, H, W)`` in [0, 1] and their prompts: ``frames:<image reward>`` (a built-in
    image reward averaged over ``num_frames`` evenly spaced frames), ``module:function``, or ``none``."""
    if name.startswith("frames:"):
        image_reward = load_reward(name.removeprefix("frames:"), model_name_or_path, device)
        if image_reward is None:
            raise ValueError("'frames:none' scores nothing: write --reward none.")
        return functools.partial(frame_averaged_reward, image_reward, num_frames)
    if name in REWARDS:
        raise ValueError(
            f"{name!r} scores images: give 'frames:{name}' to average it over --reward_num_frames frames, or a video "
            "reward 'my_module:my_function'."
        )
    return load_reward(name, model_name_or_path, device)


def frame_averaged_reward(image_reward, num_frames, videos, prompts):
    """The mean of ``image_reward`` over ``num_frames`` evenly spaced frames of each video (first and last
    included), each frame scored with its video's prompt."""
    frame_count = videos.shape[1]
    index = torch.linspace(0, frame_count - 1, min(num_frames, frame_count), device=videos.device).round().long()
    frames = videos[:, index].flatten(0, 1)
    rewards = image_reward(frames, [prompt for prompt in prompts for _ in index])
    return rewards.view(len(videos), len(index)).mean(dim=1)


def score(reward, images, conditions):
    """``reward(images, conditions)`` without grad, checked to be one value per sample, detached, in float32."""
    with torch.no_grad():
        rewards = reward(images, conditions)
    if not isinstance(rewards, torch.Tensor) or tuple(rewards.shape) != (len(images),):
        got = f"shape {tuple(rewards.shape)}" if isinstance(rewards, torch.Tensor) else f"a {type(rewards).__name__}"
        raise ValueError(
            f"the reward must return a tensor of shape ({len(images)},), one value per sample, but returned {got}."
        )
    return rewards.detach().float()


def _not_available(what, source, flag="--reward_model_name_or_path"):
    return ValueError(
        f"cannot load {what} {source!r}: it is not on disk and the Hub cannot be reached, so download it "
        f"first or point {flag} at a local copy."
    )


def resize_crop_normalize(images, size, crop, mean, std):
    """A transformers image processor's preprocessing (CLIP, PickScore, DINOv2) on a batch of tensors in [0, 1]:
    resize the shortest edge to ``size`` (bicubic, antialiased; None: no resize), the other edge to
    ``int(size * long / short)`` as ``transformers.image_transforms.get_resize_output_image_size`` truncates it;
    centre crop to ``crop`` (height, width; None: no crop) at offsets ``(edge - crop) // 2``, as the processors'
    ``center_crop`` does; then ``(x - mean) / std`` per channel."""
    if size is not None:
        height, width = images.shape[-2:]
        short, long = min(height, width), max(height, width)
        new_long = int(size * long / short)
        new_size = (new_long, size) if width <= height else (size, new_long)
        images = F.interpolate(images, size=new_size, mode="bicubic", antialias=True)
    if crop is not None:
        top, left = (images.shape[-2] - crop[0]) // 2, (images.shape[-1] - crop[1]) // 2
        images = images[..., top : top + crop[0], left : left + crop[1]]
    return _normalize(images, mean, std)


def resize_longest_pad_normalize(images, size, mean, std):
    """HPSv2's own preprocessing on a batch of tensors in [0, 1]: resize the longest edge to ``size`` (bicubic,
    antialiased, each edge ``round(edge * size / longest)``), pad with zeros (black) to a centred ``size`` x ``size``
    square, the odd row or column at the bottom or right, then ``(x - mean) / std``.

    HPSv2 scores with ``create_model_and_transforms(..., light_augmentation=True)`` (tgxs002/HPSv2 866735e,
    ``hpsv2/img_score.py`` lines 18-38), whose validation transform is ``image_transform(...,
    resize_longest_max=True)`` (``hpsv2/src/open_clip/factory.py`` lines 368-375): ``ToTensor``, then
    ``ResizeMaxSize(size, fill=0)`` on the tensor (``hpsv2/src/open_clip/transform.py`` lines 26-49 and 141-157),
    then ``Normalize``. A square image is only resized; unlike a shortest-edge crop, nothing of a 480 x 832 frame
    is cut away. (ResizeMaxSize leaves an image whose longest edge is already ``size`` unpadded, which the ViT then
    refuses; here it is padded like any other.)"""
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    new_height, new_width = round(height * scale), round(width * scale)
    if (new_height, new_width) != (height, width):
        images = F.interpolate(images, size=(new_height, new_width), mode="bicubic", antialias=True)
    pad_height, pad_width = size - new_height, size - new_width
    images = F.pad(images, (pad_width // 2, pad_width - pad_width // 2, pad_height // 2, pad_height - pad_height // 2))
    return _normalize(images, mean, std)


def _normalize(images, mean, std):
    mean = torch.as_tensor(mean, device=images.device, dtype=images.dtype).reshape(1, -1, 1, 1)
    std = torch.as_tensor(std, device=images.device, dtype=images.dtype).reshape(1, -1, 1, 1)
    return (images - mean) / std


def _embed_prompts(encode, prompts):
    """Embeddings of ``prompts`` in order, each distinct prompt encoded once (a batch repeats each K times)."""
    distinct = list(dict.fromkeys(prompts))
    embeddings = encode(distinct)
    return embeddings[torch.tensor([distinct.index(p) for p in prompts], device=embeddings.device)]


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
        raise _not_available("the DINOv2 reward", model_name_or_path) from None
    model.requires_grad_(False)
    size = processor.size["shortest_edge"] if processor.do_resize else None
    crop = (processor.crop_size["height"], processor.crop_size["width"]) if processor.do_center_crop else None
    channels = model.config.num_channels

    @torch.no_grad()
    def reward(images, class_labels):
        images = images.to(device=device, dtype=torch.float32)
        if images.shape[1] != channels:
            images = images.expand(-1, channels, -1, -1)  # a grayscale model output for an RGB classifier
        pixel_values = resize_crop_normalize(images, size, crop, processor.image_mean, processor.image_std)
        logits = model(pixel_values=pixel_values).logits.float()
        labels = torch.as_tensor(class_labels, device=device).reshape(-1, 1)
        return logits.log_softmax(dim=-1).gather(1, labels).squeeze(1)

    return reward


def hpsv2_reward(checkpoint_path, checkpoint_name, device, architecture=HPSV2_ARCHITECTURE):
    """HPSv2: the cosine of open_clip's image and prompt embeddings, with the HPS weights loaded from
    ``checkpoint_path`` or, when None, ``checkpoint_name`` fetched from the HPSv2 Hub repository (cached)."""
    import open_clip
    from huggingface_hub import hf_hub_download

    if checkpoint_path is None:
        try:
            checkpoint_path = hf_hub_download(HPSV2_REPO, checkpoint_name)
        except Exception:  # offline and not cached, or the Hub is unreachable: huggingface_hub raises several types
            raise ValueError(
                f"cannot get the HPSv2 checkpoint {checkpoint_name} from the Hub repository {HPSV2_REPO}: it is not "
                "cached and the Hub cannot be reached, so download it and point --reward_model_name_or_path at the "
                "file."
            ) from None
    elif not os.path.isfile(checkpoint_path):
        raise ValueError(
            f"the HPSv2 checkpoint {checkpoint_path!r} is not a file: point --reward_model_name_or_path at HPSv2's "
            ".pt file."
        )
    model = open_clip.create_model(
        architecture, pretrained=None, device="cpu"
    )  # the HPS weights replace the random ones
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint.get("state_dict", checkpoint))
    model = model.to(device).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(architecture)
    config = model.visual.preprocess_cfg
    size = config["size"] if isinstance(config["size"], int) else config["size"][0]

    @torch.no_grad()
    def reward(images, prompts):
        pixel_values = resize_longest_pad_normalize(
            images.to(device, torch.float32), size, config["mean"], config["std"]
        )
        image_embeddings = model.encode_image(pixel_values, normalize=True)
        text_embeddings = _embed_prompts(
            lambda texts: model.encode_text(tokenizer(texts).to(device), normalize=True), prompts
        )
        return (image_embeddings * text_embeddings).sum(-1).float()

    return reward


def clip_reward(name, model_name_or_path, device):
    """``logit_scale * cosine`` of a transformers ``CLIPModel``'s image and prompt embeddings (PickScore's
    score), as ``CLIPModel.forward`` computes them (its ``get_*_features`` changed return type in
    transformers 5). The processor comes from ``model_name_or_path`` when it holds one, else from the default."""
    from transformers import CLIPModel, CLIPProcessor

    default_model, default_processor = CLIP_REWARDS[name]
    source = model_name_or_path or default_model
    try:
        model = CLIPModel.from_pretrained(source).to(device).eval().requires_grad_(False)
    except (OSError, ValueError):
        raise _not_available(f"the {name} reward", source) from None
    try:
        processor = CLIPProcessor.from_pretrained(source)
    except (OSError, ValueError):
        try:
            processor = CLIPProcessor.from_pretrained(default_processor)
        except (OSError, ValueError):
            raise _not_available(f"the {name} reward's processor", default_processor) from None
    image_processor, tokenizer = processor.image_processor, processor.tokenizer
    size = image_processor.size["shortest_edge"]
    crop = (image_processor.crop_size["height"], image_processor.crop_size["width"])

    def encode_text(texts):
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(device)
        return F.normalize(model.text_projection(model.text_model(**tokens).pooler_output), dim=-1)

    @torch.no_grad()
    def reward(images, prompts):
        pixel_values = resize_crop_normalize(
            images.to(device, torch.float32), size, crop, image_processor.image_mean, image_processor.image_std
        )
        image_embeddings = F.normalize(
            model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output), dim=-1
        )
        return (model.logit_scale.exp() * (image_embeddings * _embed_prompts(encode_text, prompts)).sum(-1)).float()

    return reward
