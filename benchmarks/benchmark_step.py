#!/usr/bin/env python
"""Step time and peak memory of the trainers at full model size, with random weights (no download).

    python benchmarks/benchmark_step.py --model sdxl --device cuda   # SDXL at 1024 px + HPSv2 (ViT-H-14), bf16
    python benchmarks/benchmark_step.py --model sit --device cuda    # SiT-XL/2 + sd-vae-ft-ema + DINOv2-L, bf16
    python benchmarks/benchmark_step.py --model wan --device cuda    # Wan2.1-T2V-1.3B, 480x832x81 (--wan_size 14B)
    python benchmarks/benchmark_step.py --model sdxl                 # the same path with tiny models, on CPU

Builds every network from its published configuration with random weights in a temporary folder (CLIP's
real BPE vocabulary comes from open_clip's package), runs ``accelerate launch train_<model>.py`` for a few
steps with each operator, and prints the median step times and peak GPU memory the trainer reports (after
its first steps, which warm up), their AMD / DMD ratio (DMD as DMD2 runs it: no reward, no sharpening), and the memory of this design (one frozen network
with two LoRA adapters) against DMD2's (a frozen teacher and two fully trained copies), from parameter
counts on the meta device.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
from diffusers import (
    AutoencoderKL,
    DiTTransformer2DModel,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DConditionModel,
)
from transformers import (
    BitImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Dinov2Config,
    Dinov2ForImageClassification,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from amd_utils.lora import add_student_and_fake_adapters  # noqa: E402

# Published configurations (full) and the smallest that exercise the same code (tiny).
CONFIGS = {
    "sit": {  # SiT-XL/2 at 256 px (DiT-XL/2's network), stabilityai/sd-vae-ft-ema, facebook/dinov2-large-imagenet1k-1-layer
        "full": {
            "transformer": dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_eps=1e-6),
            "vae": dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, scaling_factor=0.18215),
            "reward": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=14, image_size=518, num_labels=1000),
            "reward_size": (256, 224),
        },
        "tiny": {
            "transformer": dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6),
            "vae": dict(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4, scaling_factor=0.18215),
            "reward": dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, patch_size=2, image_size=16, num_labels=10),
            "reward_size": (16, 16),
        },
    },
    "sdxl": {  # stabilityai/stable-diffusion-xl-base-1.0 (UNet, VAE, CLIP ViT-L and bigG text encoders)
        "full": {
            "unet": dict(addition_embed_type="text_time", addition_time_embed_dim=256, attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], projection_class_embeddings_input_dim=2816, sample_size=128, transformer_layers_per_block=[1, 2, 10], use_linear_projection=True),
            "vae": dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4, sample_size=1024, scaling_factor=0.13025),
            "text_encoder": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu"),
            "text_encoder_2": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280, hidden_act="gelu"),
            "resolution": 1024,
        },
        "tiny": {
            "unet": dict(addition_embed_type="text_time", addition_time_embed_dim=8, attention_head_dim=(2, 4), block_out_channels=(32, 64), cross_attention_dim=64, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), projection_class_embeddings_input_dim=80, sample_size=8, layers_per_block=1, transformer_layers_per_block=1, use_linear_projection=True, norm_num_groups=1),
            "vae": dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, sample_size=16),
            "text_encoder": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
            "text_encoder_2": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
            "resolution": 16,
        },
    },
    "wan": {  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers / -14B-Diffusers transformers, Wan2.1's VAE, 480 x 832 x 81
        "full": {
            "transformer": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
            "vae": dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]),
            # UMT5-XXL's width with one layer: prompts are encoded once and cached, so its depth costs no step time.
            "text_encoder": dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64),
            "video": (480, 832, 81),
        },
        "full-14b": {
            "transformer": dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
        },
        "tiny": {
            "transformer": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
            "vae": dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]),
            "text_encoder": dict(d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2),
            "video": (16, 16, 5),
        },
    },
}  # fmt: skip


# What each run defaults to: the batch and LoRA rank of the measured GPU runs (docs/sdxl.md, docs/sit.md).
TRAIN_BATCH_SIZE = {"sit": 32, "sdxl": 4, "wan": 4}
LORA_RANK = {"sit": 32, "sdxl": 64, "wan": 64}


def random_weights(module, device, float32=False):
    """Materialize a module built on the meta device with N(0, 0.02) weights (speed and memory, not quality), in
    bf16 on CUDA unless ``float32`` (rewards are loaded in float32)."""
    module.to_empty(device=device)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.02)
    return module.to(torch.bfloat16 if device == "cuda" and not float32 else torch.float32)


def save(component, path, device, float32=False):
    """Save a pipeline component. A network (built on the meta device) gets random weights on ``device``; with
    ``device`` None only its config is written, for benchmarks/estimate_memory.py, which builds networks from
    their configs."""
    if not isinstance(component, torch.nn.Module):
        component.save_pretrained(path)  # tokenizer, scheduler
    elif device is None:
        component.save_config(path) if hasattr(component, "save_config") else component.config.save_pretrained(path)
    else:
        random_weights(component, device, float32).save_pretrained(path)


def save_pipeline(folder, class_name, components, device):
    """A diffusers pipeline folder: every component in its subfolder (see :func:`save`), and ``model_index.json``."""
    import diffusers

    index = {"_class_name": class_name, "_diffusers_version": diffusers.__version__}
    for name, component in components.items():
        index[name] = [type(component).__module__.split(".")[0], type(component).__name__]
        save(component, os.path.join(folder, name), device)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


def clip_tokenizer(folder):
    """CLIP's tokenizer, written from the BPE vocabulary open_clip ships (no download)."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    vocab = {token: i for token, i in bpe.encoder.items() if i < 49406} | {
        "<|startoftext|>": 49406,
        "<|endoftext|>": 49407,
    }
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77)


def t5_tokenizer(pieces):
    """A T5 tokenizer over ``pieces`` ([(piece, log-probability)], after <pad>, </s> and <unk>), built with the
    tokenizers library as T5's tokenizer.json is (a Unigram model, Metaspace, "</s>" appended): no download, and no
    sentencepiece file, which transformers 4.48's T5Tokenizer needs (5's takes a vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    unigram = Tokenizer(models.Unigram([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces], unk_id=2))
    unigram.pre_tokenizer, unigram.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    unigram.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=unigram, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )


def build(model, config, size, folder, device):
    """The model folder (``folder/model``) and the reward the trainer reads, every network built on the meta device
    from ``config`` and saved with random weights on ``device`` (None: configs only, see :func:`save`); returns the
    trainer's model-specific flags."""
    if model == "sit":
        with torch.device("meta"):
            transformer, vae = DiTTransformer2DModel(**config["transformer"]), AutoencoderKL(**config["vae"])
            reward = Dinov2ForImageClassification(Dinov2Config(**config["reward"]))
        components = {"transformer": transformer, "vae": vae, "scheduler": FlowMatchEulerDiscreteScheduler()}
        save_pipeline(os.path.join(folder, "model"), ["pipeline_sit", "SiTPipeline"], components, device)
        save(reward, os.path.join(folder, "reward"), device, float32=True)
        resize, crop = config["reward_size"]
        BitImageProcessor(
            size={"shortest_edge": resize}, crop_size={"height": crop, "width": crop},
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        ).save_pretrained(os.path.join(folder, "reward"))  # fmt: skip
        return ["--reward", "dinov2", "--reward_model_name_or_path", os.path.join(folder, "reward")]

    if model == "wan":
        return build_wan(config, size, folder, device)
    tokenizer = clip_tokenizer(os.path.join(folder, "vocab"))
    text_configs = [
        CLIPTextConfig(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, **config[name])
        for name in ("text_encoder", "text_encoder_2")
    ]
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**config["unet"]), AutoencoderKL(**config["vae"])
        text_encoder, text_encoder_2 = CLIPTextModel(text_configs[0]), CLIPTextModelWithProjection(text_configs[1])
    components = {
        "unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer, "tokenizer_2": tokenizer,
        "scheduler": EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    }  # fmt: skip
    save_pipeline(os.path.join(folder, "model"), "StableDiffusionXLPipeline", components, device)
    with open(os.path.join(folder, "prompts.txt"), "w") as f:
        f.write("a photo of a cat\na watercolor of a lighthouse at dawn\n")
    flags = ["--prompts_file", os.path.join(folder, "prompts.txt"), "--resolution", str(config["resolution"])]
    if size == "tiny":  # a tiny CLIP reward; the full run scores with HPSv2's ViT-H-14
        reward = tiny_clip_reward(folder, tokenizer, config["text_encoder"]["hidden_size"], device)
        return flags + ["--reward", "clip", "--reward_model_name_or_path", reward, "--reward_resolution", "32"]
    return flags + [
        "--reward",
        "hpsv2",
        "--reward_model_name_or_path",
        hps_checkpoint(folder, device),
        "--gradient_checkpointing",
    ]


def build_wan(config, size, folder, device):
    """A Wan2.1 T2V pipeline (a small Unigram tokenizer; see CONFIGS) and an image reward scored on frames."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    words = ["▁a", "▁cat", "▁surfing", "▁wave", "▁lighthouse", "▁at", "▁dawn", "▁", "a", "c", "t", "s", "w"]
    tokenizer = t5_tokenizer([(w, -1.0) for w in words])
    with torch.device("meta"):
        transformer, vae = WanTransformer3DModel(**config["transformer"]), AutoencoderKLWan(**config["vae"])
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **config["text_encoder"]))
    components = {
        "tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "transformer": transformer,
        "scheduler": UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    }  # fmt: skip
    save_pipeline(os.path.join(folder, "model"), "WanPipeline", components, device)
    with open(os.path.join(folder, "prompts.txt"), "w") as f:
        f.write("a cat surfing a wave\na lighthouse at dawn\n")
    height, width, frames = config["video"]
    flags = ["--prompts_file", os.path.join(folder, "prompts.txt"), "--height", str(height), "--width", str(width),
             "--num_frames", str(frames), "--text_encoder_device", "cpu"]  # fmt: skip
    if size == "tiny":
        reward = tiny_clip_reward(folder, clip_tokenizer(os.path.join(folder, "vocab")), 32, device)
        return flags + ["--max_sequence_length", "8", "--reward", "frames:clip", "--reward_model_name_or_path", reward]
    return flags + ["--reward", "frames:hpsv2", "--reward_model_name_or_path", hps_checkpoint(folder, device),
                    "--gradient_checkpointing", "--microbatch_size", "1", "--use_8bit_adam"]  # fmt: skip


def tiny_clip_reward(folder, tokenizer, text_width, device):
    """A tiny transformers CLIP reward folder; returns its path."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    text_config = {"hidden_size": text_width, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "projection_dim": 32, "vocab_size": 49408}  # fmt: skip
    vision_config = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "image_size": 32, "patch_size": 8}  # fmt: skip
    path = os.path.join(folder, "reward")
    with torch.device("meta"):
        reward = CLIPModel(CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=8))
    save(reward, path, device, float32=True)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def hps_checkpoint(folder, device):
    """HPSv2's ViT-H-14 with random weights, saved as HPSv2 saves its checkpoints (``{"state_dict": ...}``; with
    ``device`` None, an empty state dict); returns its path."""
    import open_clip

    with torch.device("meta"):
        hps = open_clip.create_model("ViT-H-14", pretrained=None, device="meta")
    state_dict = random_weights(hps, device, float32=True).state_dict() if device else {}
    path = os.path.join(folder, "hps.pt")
    torch.save({"state_dict": state_dict}, path)
    return path


def run_trainer(model, folder, flags, operator, args, name=None, extra=()):
    """One short run into ``folder/out-<name or operator>``; returns the trainer's closing 'Median step time: ...'
    report (first steps excluded). The dmd run is what a DMD2 user pays: no sharpening and no reward (nothing
    decoded or scored). ``extra`` flags come last, so they override the others."""
    if operator == "dmd":
        flags = [*flags, "--reward", "none", "--no_sharpen"]  # argparse: the last --reward counts
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no",
        os.path.join(REPO, f"train_amd_{model}.py"), "--pretrained_model_name_or_path", os.path.join(folder, "model"), *flags,
        "--operator", operator, "--output_dir", os.path.join(folder, f"out-{name or operator}"), "--max_train_steps", str(args.steps),
        "--train_batch_size", str(args.train_batch_size), "--group_size", str(args.group_size), "--lora_rank", str(args.lora_rank),
        "--validation_steps", str(args.steps + 1), "--checkpointing_steps", str(args.steps + 1), "--report_to", "none",
        "--mixed_precision", "no" if args.device == "cpu" else "bf16", "--allow_tf32", "--lr_warmup_steps", "0", *extra,
    ]  # fmt: skip
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    found = re.search(r"Median step time: (.*)", result.stdout + result.stderr)
    if result.returncode != 0 or not found:
        raise SystemExit(f"the {name or operator} run failed:\n{result.stderr[-3000:]}")
    return found.group(1).strip()


def memory_budget(model, size, lora_rank, adam_bytes=8):
    """(base parameters, adapter parameters, GiB of this design, GiB of DMD2's): bf16 frozen weights
    (2 bytes a parameter); a trained parameter in fp32 with its gradient (8 bytes) and two Adam moments
    (``adam_bytes``: 8 in fp32, 2 with 8-bit Adam)."""
    import importlib

    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        config = CONFIGS[model][size]
        network_class = {"sit": DiTTransformer2DModel, "sdxl": UNet2DConditionModel, "wan": WanTransformer3DModel}[
            model
        ]
        network = network_class(**config["transformer" if model != "sdxl" else "unet"])
    base = sum(p.numel() for p in network.parameters())
    targets = importlib.import_module(f"train_amd_{model}").LORA_TARGET_MODULES
    lora = sum(
        p.numel() for params in add_student_and_fake_adapters(network, targets, lora_rank).values() for p in params
    )
    trained = 8 + adam_bytes
    return base, lora, (2 * base + trained * lora) / 2**30, (2 * base + 2 * trained * base) / 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="sdxl")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cpu: tiny models (checks the path, times nothing real); cuda: full size.",
    )
    parser.add_argument("--steps", type=int, default=12, help="Training steps per operator (the first ones warm up).")
    parser.add_argument("--train_batch_size", type=int, default=None, help="Default: 4 (sdxl, wan), 32 (sit).")
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--lora_rank", type=int, default=None, help="Default: 64 (sdxl, wan), 32 (sit).")
    parser.add_argument("--wan_size", choices=["1.3B", "14B"], default="1.3B", help="The Wan transformer run on CUDA.")
    parser.add_argument("--operators", nargs="+", default=["dmd", "amd"])
    args = parser.parse_args()
    args.train_batch_size = args.train_batch_size or TRAIN_BATCH_SIZE[args.model]
    args.lora_rank = args.lora_rank or LORA_RANK[args.model]
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU: without one, run the tiny benchmark with --device cpu.")
    size = "tiny" if device == "cpu" else "full"
    with tempfile.TemporaryDirectory() as folder:
        config = CONFIGS[args.model][size]
        if args.model == "wan" and size == "full" and args.wan_size == "14B":
            config = {**config, **CONFIGS["wan"]["full-14b"]}
        flags = build(args.model, config, size, folder, device)
        if device == "cuda":
            torch.cuda.empty_cache()  # the built networks are gone: leave the GPU to the trainer
        reports = {operator: run_trainer(args.model, folder, flags, operator, args) for operator in args.operators}
    for operator, report in reports.items():
        print(f"{operator}: {report}", flush=True)
    if {"dmd", "amd"} <= reports.keys():
        times = {op: [float(s) for s in re.findall(r"([\d.]+) s ", reports[op])] for op in ("dmd", "amd")}
        print("amd / dmd step time: " + ", ".join(f"{a / d:.3f}" for a, d in zip(times["amd"], times["dmd"])))
    # Wan: both published sizes, from parameter counts alone (meta device), whatever was run.
    budgets = [("full", 8), ("full", 2), ("full-14b", 8), ("full-14b", 2)] if args.model == "wan" else [(size, 8)]
    for budget_size, adam_bytes in budgets:
        base, lora, ours, dmd2 = memory_budget(args.model, budget_size, args.lora_rank, adam_bytes)
        adam = "8-bit Adam" if adam_bytes == 2 else "Adam"
        name = {"full": "1.3B", "full-14b": "14B"}.get(budget_size, budget_size) if args.model == "wan" else budget_size
        print(
            f"{args.model} {name}: base network {base / 1e6:.1f} M parameters, student + fake LoRA "
            f"(rank {args.lora_rank}) {lora / 1e6:.1f} M"
        )
        print(
            f"weights + gradients + {adam}: one frozen base with two adapters {ours:.2f} GiB; DMD2's frozen teacher + two "
            f"trained copies {dmd2:.2f} GiB"
        )


if __name__ == "__main__":
    main()
