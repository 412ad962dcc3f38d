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
    # DiT zero-initializes its modulations; random ones make a teacher whose outputs depend on t and c.
    with torch.no_grad():
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


TINY_OPEN_CLIP = "amd-tiny-clip"


def register_tiny_open_clip(folder):
    """Register a tiny ViT open_clip architecture (open_clip's own BPE tokenizer) under ``TINY_OPEN_CLIP``."""
    import json

    import open_clip

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    with open(f"{folder}/{TINY_OPEN_CLIP}.json", "w") as f:
        json.dump(config, f)
    open_clip.add_model_config(str(folder))


def tiny_hpsv2_checkpoint(path, seed=0):
    """Random weights of the tiny open_clip model, saved as HPSv2 saves its checkpoints ({"state_dict": ...})."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_OPEN_CLIP, pretrained=None)
    torch.save({"state_dict": model.state_dict()}, str(path))
    return str(path)


def tiny_clip_folder(path, seed=0):
    """A tiny transformers CLIPModel with its processor (a BPE vocabulary written to the folder)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tokenizer, vocab_size = _tiny_clip_tokenizer(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(path))
    config = CLIPConfig(
        text_config={"vocab_size": vocab_size, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": vocab_size - 2,
                     "eos_token_id": vocab_size - 1, "pad_token_id": vocab_size - 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(str(path))
    return str(path)


def _tiny_clip_tokenizer(folder):
    """A CLIP BPE tokenizer over a tiny vocabulary written to ``folder`` (words outside it become <unk>)."""
    import json

    from transformers import CLIPTokenizer

    vocab = ["a", "c", "t", "o", "g", "d", "s", "r", "e", "n", "a</w>", "t</w>", "g</w>", "s</w>", "e</w>", "n</w>",
             "ca", "cat</w>", "do", "dog</w>", "<unk>", "<|startoftext|>", "<|endoftext|>"]  # fmt: skip
    merges = ["#version: 0.2", "c a", "ca t</w>", "d o", "do g</w>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77), len(vocab)


def tiny_sdxl_pipeline(path, seed=0):
    """An SDXL pipeline folder at the benchmark's tiny size (``benchmarks/benchmark_step.py``: 16 x 16 images, 8 x 8
    latents, diffusers' own SDXL test blocks with one layer each): UNet with text-time conditioning, VAE, both CLIP
    text encoders, tokenizers, scheduler."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from benchmarks.benchmark_step import CONFIGS

    config = CONFIGS["sdxl"]["tiny"]
    torch.manual_seed(seed)
    unet, vae = UNet2DConditionModel(**config["unet"]), AutoencoderKL(**config["vae"])
    tokenizer, vocab_size = _tiny_clip_tokenizer(path / "_vocab")
    text_configs = [
        CLIPTextConfig(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                       vocab_size=vocab_size, max_position_embeddings=77, **config[name])
        for name in ("text_encoder", "text_encoder_2")
    ]  # fmt: skip
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_configs[0]), text_encoder_2=CLIPTextModelWithProjection(text_configs[1]),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
    )  # fmt: skip
    pipe.save_pretrained(str(path))
    return str(path)


def tiny_wan_pipeline(path, seed=0):
    """A Wan2.1 T2V pipeline folder at the size of diffusers' own Wan tests: a 2-layer WanTransformer3DModel, a
    small AutoencoderKLWan (16 latent channels, 4x temporal and 8x spatial compression), a 1-layer UMT5 encoder
    and a T5 Unigram tokenizer built from a vocabulary list (no download)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from benchmarks.benchmark_step import t5_tokenizer

    torch.manual_seed(seed)
    words = ["▁a", "▁cat", "▁dog", "▁on", "▁mat", "▁in", "▁the", "▁snow", "▁", "a", "c", "t", "d", "o", "g", "n", "s"]
    tokenizer = t5_tokenizer([(w, -float(i)) for i, w in enumerate(words)])
    text_config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
    )
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )  # fmt: skip
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=UMT5EncoderModel(text_config), vae=vae, transformer=transformer,
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    )  # fmt: skip
    pipe.save_pretrained(str(path))
    return str(path)


def tiny_captioned_images(path, seed=0):
    """An imagefolder of 6 random RGB images of unusual shapes, with captions in ``metadata.jsonl``."""
    import json

    import numpy as np
    from PIL import Image

    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with open(path / "metadata.jsonl", "w") as f:
        for i, (width, height) in enumerate([(24, 18), (18, 30), (16, 16), (33, 17), (20, 21), (40, 16)]):
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": f"a photo number {i}"}) + "\n")
    return str(path)


def tiny_class_folders(path, num_classes=4, per_class=2, seed=0):
    """An ImageNet-style tree: ``<class index>/<i>.png``, random greyscale images of unusual shapes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(num_classes):
        (path / str(label)).mkdir(parents=True)
        for i in range(per_class):
            height, width = 8 + i, 12 - i
            Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(path / str(label) / f"{i}.png")
    return str(path)
