"""Tiny models built in-process from configs, saved in the layouts the trainers read. No download."""

import torch
from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler
from transformers import BitImageProcessor, Dinov2Config, Dinov2ForImageClassification

from amd_utils.sit import save_sit_pipeline

NUM_CLASSES = 10


def tiny_sit_pipeline(path, seed=0):
    """A 2-layer pixel-space SiT (1 x 8 x 8 images, 10 classes, learned-sigma channels) as a SiT pipeline folder."""
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=2, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=NUM_CLASSES, norm_eps=1e-6,
    )  # fmt: skip
    with torch.no_grad():  # DiT zero-initializes its modulations; random ones make a teacher whose outputs depend on t and c
        for name, parameter in transformer.named_parameters():
            if "norm1.linear" in name or "proj_out" in name:
                parameter.normal_(0, 0.05)
    save_sit_pipeline(str(path), transformer, FlowMatchEulerDiscreteScheduler())
    return str(path)


def tiny_dinov2_classifier(path, seed=0):
    """A 1-layer DINOv2 image classifier over the 10 classes, for 1-channel 8 x 8 images, with its processor."""
    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=8,
        patch_size=2, num_channels=1, num_labels=NUM_CLASSES,
    )  # fmt: skip
    Dinov2ForImageClassification(config).save_pretrained(str(path))
    BitImageProcessor(
        size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5]
    ).save_pretrained(str(path))
    return str(path)
