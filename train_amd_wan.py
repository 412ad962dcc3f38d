#!/usr/bin/env python
"""Adaptive Matching Distillation for Wan2.1 text-to-video: a 4-step LoRA student that stock WanPipeline samples.

    accelerate launch train_amd_wan.py \
        --pretrained_model_name_or_path Wan-AI/Wan2.1-T2V-1.3B-Diffusers \
        --prompts_file prompts.txt --reward frames:hpsv2 --train_batch_size 4 --group_size 4 \
        --mixed_precision bf16 --gradient_checkpointing --text_encoder_device cpu --output_dir wan-amd-4step

One frozen ``WanTransformer3DModel`` carries two LoRA adapters: ``student`` (the 4-step generator) and ``fake``
(the fake teacher); with adapters disabled it is the real teacher, guided with Wan's negative prompt as the
unconditional (or give a separate teacher with ``--real_score_model_name_or_path``). Flow matching as diffusers
writes it: ``x_t = (1 - sigma) x0 + sigma noise``, velocity ``noise - x0`` (``amd_utils.parameterization``). A step
updates the fake teacher; every ``--fake_update_ratio``-th step also updates the student. The output folder holds
``pytorch_lora_weights.safetensors`` for ``WanPipeline.load_lora_weights``, the student's scheduler in
``scheduler/`` and a model card with the 4-step loading snippet.
"""

import argparse
import functools
import os

import torch
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, broadcast
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from peft import LoraConfig

from amd_utils.hub import amd_settings, write_model_card
from amd_utils.images import save_and_log_video_grid
from amd_utils.lora import FAKE, STUDENT, use_adapter
from amd_utils.objective import fake_sample_weights, group_advantages, student_loss, weighted_denoising_loss
from amd_utils.parameterization import flow_add_noise, flow_model_target, flow_x0
from amd_utils.prompts import add_prompt_arguments, check_prompt_args, load_prompts
from amd_utils.rewards import load_video_reward, score
from amd_utils.training import (
    TrainingLoop,
    add_amd_arguments,
    add_optimization_arguments,
    add_output_arguments,
    check_pipeline,
    check_shared_args,
    exit_bad_input,
    latest_validation,
    make_accelerator,
    prepare_adapters,
    random_stream_kept,
    score_noise_levels,
    validation_rng,
)

logger = get_logger(__name__)
SCRIPT = os.path.basename(__file__)

# Self- and cross-attention and the feed-forward of every block.
LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
# Wan2.1's own default negative prompt, `sample_neg_prompt` in Wan-Video/Wan2.1 wan/configs/shared_config.py, which
# Self-Forcing's configs use too (`negative_prompt`). diffusers' WanPipeline encodes "" when given none.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
NUM_TRAIN_TIMESTEPS = 1000  # the transformer's timestep is sigma * 1000


def build_parser(prog=SCRIPT, description="Adaptive Matching Distillation for Wan2.1 T2V."):
    """The flags, shared with the streaming trainer (train_amd_wan_streaming.py), which adds its own."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    group = parser.add_argument_group("models, reward and prompts")
    group.add_argument("--pretrained_model_name_or_path", required=True, help="Wan2.1 T2V pipeline folder or Hub id.")
    group.add_argument(
        "--pretrained_vae_model_name_or_path", default=None, help="An AutoencoderKLWan; default: the pipeline's vae/."
    )
    group.add_argument(
        "--real_score_model_name_or_path",
        default=None,
        help="A separate frozen real teacher (a Wan pipeline folder, e.g. the 14B for a 1.3B student); default: the "
        "base with its adapters off.",
    )
    group.add_argument(
        "--reward",
        default="frames:hpsv2",
        help="'frames:<image reward>' (hpsv2, hpsv2.0, pickscore, clip on --reward_num_frames frames, averaged), "
        "'my_module:my_function' taking (videos (B, F, 3, H, W) in [0, 1], prompts), or 'none' (plain DMD with "
        "--operator dmd --no_sharpen).",
    )
    group.add_argument(
        "--reward_model_name_or_path", default=None, help="The image reward's weights; default: the reward's own."
    )
    group.add_argument("--reward_num_frames", type=int, default=4, help="Frames a 'frames:' reward scores per video.")
    add_prompt_arguments(group)
    add_amd_arguments(parser)
    group = parser.add_argument_group("Wan")
    group.add_argument("--height", type=int, default=480)
    group.add_argument("--width", type=int, default=832)
    group.add_argument("--num_frames", type=int, default=81, help="Frames per video: 4k + 1.")
    group.add_argument(
        "--real_guidance_scale",
        type=float,
        default=4.0,
        help="CFG scale w of the real teacher, standard form uncond + w (cond - uncond) (the public recipes' 3.0 in "
        "their cond + w (cond - uncond) form).",
    )
    group.add_argument("--negative_prompt", default=WAN_NEGATIVE_PROMPT, help="The real teacher's unconditional.")
    group.add_argument("--num_student_steps", type=int, default=4)
    group.add_argument(
        "--student_timestep_shift",
        type=float,
        default=5.0,
        help="The student's noise levels are shift(1 - k/N) (5, N = 4: timesteps 1000, 937, 833, 625).",
    )
    group.add_argument(
        "--score_timestep_shift",
        type=float,
        default=5.0,
        help="Score noise levels: u ~ U[0, 1) shifted by this, then clamped to [--min_score_noise_level, "
        "--max_score_noise_level] (Self-Forcing's draw).",
    )
    group.add_argument("--max_sequence_length", type=int, default=512, help="UMT5 tokens per prompt (WanPipeline's).")
    group.add_argument(
        "--text_encoder_device", default=None, help="e.g. 'cpu' to keep UMT5 off the GPU; default: the training device."
    )
    group.add_argument(
        "--microbatch_size",
        type=int,
        default=None,
        help="Videos per transformer pass; passes with grad accumulate their gradients (exact: the losses are per "
        "video). Default: the whole batch at once.",
    )
    group.add_argument("--validation_prompts", nargs="+", default=None, help="Default: the first 4 training prompts.")
    add_optimization_arguments(parser)
    add_output_arguments(parser)
    # The public Wan DMD recipes (docs/wan.md: "Recipe defaults"): 5 fake updates per student update, Adam with
    # beta1 = 0, gradients clipped at 10; LoRA rank 64 and LongLive's LoRA learning rates.
    parser.set_defaults(
        output_dir="wan-amd",
        train_batch_size=4,
        learning_rate=1e-5,
        fake_learning_rate=2e-6,
        adam_beta1=0.0,
        max_grad_norm=10.0,
        lora_rank=64,
    )
    return parser


def check_args(parser, args):
    """Refuse bad flag values with one sentence (argparse's exit status 2) before anything is loaded."""
    check_shared_args(parser, args)
    check_prompt_args(parser, args)
    if (args.num_frames - 1) % 4 != 0:
        parser.error(f"--num_frames must be 4k + 1 (Wan's VAE packs 4 frames into one latent), got {args.num_frames}.")
    if args.height % 16 or args.width % 16:
        parser.error(f"--height and --width must be multiples of 16, got {args.height} x {args.width}.")
    for name in ("num_student_steps", "reward_num_frames", "max_sequence_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.microbatch_size is not None and args.microbatch_size < 1:
        parser.error(f"--microbatch_size must be at least 1, got {args.microbatch_size}.")
    if min(args.student_timestep_shift, args.score_timestep_shift) <= 0:
        parser.error("--student_timestep_shift and --score_timestep_shift must be positive.")


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def student_scheduler(num_steps, shift):
    """The stock scheduler that samples the student: ``set_timesteps(N)`` gives the noise levels
    ``shift_s(1 - k/N)`` (to 4e-4: its grid ends at its sigma_min, not 0) and ``step`` re-noises the clean
    estimate with fresh noise, as the student's training does. The trainer takes its noise levels from it."""
    terminal = shift / (shift + num_steps - 1) if num_steps > 1 else None
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        shift=shift * num_steps / (shift + num_steps - 1),
        shift_terminal=terminal,
        stochastic_sampling=True,
    )
    scheduler.set_timesteps(num_steps)
    return scheduler


def load_models(args, device, dtype):
    """The frozen base transformer, the optional separate real teacher, the VAE, the prompt encoder (a WanPipeline
    holding only the tokenizer and UMT5) and the reward."""
    path = args.pretrained_model_name_or_path
    check_pipeline(path, {"transformer": "WanTransformer3DModel", "text_encoder": "UMT5EncoderModel"}, "a Wan")
    try:
        transformer = WanTransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        text_device = args.text_encoder_device or device
        text_pipeline = WanPipeline.from_pretrained(path, transformer=None, vae=None, scheduler=None, torch_dtype=dtype)
        text_pipeline.text_encoder.requires_grad_(False).to(text_device).eval()
    except (OSError, ValueError):  # weights missing or unreadable
        raise ValueError(
            f"cannot load a Wan pipeline from {path!r}: give a local folder or a reachable Hub id."
        ) from None
    real_transformer = None
    if args.real_score_model_name_or_path:
        real_path = args.real_score_model_name_or_path
        check_pipeline(real_path, {"transformer": "WanTransformer3DModel"}, "a Wan")
        with torch.random.fork_rng(devices=[]):  # loading draws random numbers: keep the run's stream as without it
            real_transformer = WanTransformer3DModel.from_pretrained(
                real_path, subfolder="transformer", torch_dtype=dtype
            )
        real_transformer.requires_grad_(False).to(device).eval()
    vae_source, subfolder = (args.pretrained_vae_model_name_or_path, None)
    if not vae_source:
        vae_source, subfolder = path, "vae"
    try:
        vae = AutoencoderKLWan.from_pretrained(vae_source, subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError):
        raise ValueError(f"cannot load the VAE {vae_source!r}: not on disk and the Hub cannot be reached.") from None
    reward = load_video_reward(args.reward, args.reward_model_name_or_path, device, args.reward_num_frames)
    return transformer, real_transformer, vae, text_pipeline, reward


def check_reward(reward, args, prompts, device):
    """Score a group of grey videos, so that a reward that breaks on a batch fails before anything is written."""
    if reward is not None:
        grey = torch.full((args.group_size, args.num_frames, 3, args.height, args.width), 0.5, device=device)
        score(reward, grey, prompts[:1] * args.group_size)


class PromptEmbeddings:
    """UMT5 embeddings of prompts as WanPipeline makes them, each prompt encoded once under no_grad and kept on
    the CPU (UMT5-XXL may live there too: ``--text_encoder_device cpu``). Each prompt is encoded on its own: in a
    batch, its embedding would depend in the last bits on which other prompts were new at the same step (the
    kernels' sums split by batch size), and a resumed run, whose cache starts empty elsewhere, would land elsewhere."""

    def __init__(self, text_pipeline, max_sequence_length, dtype):
        self.text_pipeline, self.max_sequence_length, self.dtype, self.cache = (
            text_pipeline,
            max_sequence_length,
            dtype,
            {},
        )

    @torch.no_grad()
    def __call__(self, prompts, device):
        for prompt in prompts:
            if prompt not in self.cache:
                embeds, _ = self.text_pipeline.encode_prompt(
                    [prompt],
                    do_classifier_free_guidance=False,
                    max_sequence_length=self.max_sequence_length,
                    device=self.text_pipeline.text_encoder.device,
                    dtype=self.dtype,
                )
                self.cache[prompt] = embeds[0].cpu()
        return torch.stack([self.cache[p] for p in prompts]).to(device)


def predict_x0(model, adapter, x_t, sigma, prompt_embeds, microbatch_size=None):
    """Clean estimate ``x_t - sigma v`` (float32) from the network with ``adapter`` active (None: the base),
    ``microbatch_size`` videos per pass (all at once if None)."""
    use_adapter(model, adapter)
    size = microbatch_size or len(x_t)
    velocity = torch.cat([
        model(x.to(e.dtype), timestep=s * NUM_TRAIN_TIMESTEPS, encoder_hidden_states=e).sample
        for x, s, e in zip(x_t.split(size), sigma.split(size), prompt_embeds.split(size))
    ])  # fmt: skip
    return flow_x0(x_t, velocity, sigma)


def student_input(model, prompt_embeds, sigmas, num_steps, shape, device, microbatch_size=None):
    """DMD2's backward simulation: the student's first ``num_steps`` steps from pure noise without grad (predict
    x0, re-noise it to the next noise level with fresh noise from the global RNG, as the saved scheduler's
    stochastic step does); returns the input of the next step."""
    x = torch.randn(shape, device=device)
    with torch.no_grad():
        for i in range(num_steps):
            x0 = predict_x0(model, STUDENT, x, sigmas[i].expand(shape[0]), prompt_embeds, microbatch_size)
            x = flow_add_noise(x0, torch.randn(shape, device=device), sigmas[i + 1].expand(shape[0]))
    return x


def sample_student(model, prompt_embeds, sigmas, shape, device, microbatch_size=None):
    """The student's videos (latents) in all its steps: what WanPipeline with the saved scheduler samples when
    it draws from the same global RNG state (the scheduler's step has no generator)."""
    last = len(sigmas) - 2
    x_in = student_input(model, prompt_embeds, sigmas, last, shape, device, microbatch_size)
    with torch.no_grad():
        return predict_x0(model, STUDENT, x_in, sigmas[last].expand(shape[0]), prompt_embeds, microbatch_size)


def vae_scale_factors(vae):
    """(temporal, spatial) compression of a Wan VAE: its config's ``scale_factor_temporal`` / ``_spatial``
    (diffusers >= 0.35), or, on diffusers 0.34, which has neither, what 0.34's WanPipeline derives:
    ``2 ** sum(temperal_downsample)`` and ``2 ** len(temperal_downsample)``."""
    config = vae.config
    downsample = config.temperal_downsample  # sic: diffusers' name
    return (
        config.get("scale_factor_temporal") or 2 ** sum(downsample),
        config.get("scale_factor_spatial") or 2 ** len(downsample),
    )


def latent_shape(args, batch_size, model, vae):
    """(B, C, latent frames, latent height, latent width) of --num_frames x --height x --width videos."""
    temporal, spatial = vae_scale_factors(vae)
    frames = (args.num_frames - 1) // temporal + 1
    return (batch_size, model.config.in_channels, frames, args.height // spatial, args.width // spatial)


@torch.no_grad()
def to_videos(latents, vae):
    """Latents to videos (B, F, 3, H, W) in [0, 1], un-normalized with the VAE's latents_mean / latents_std as
    WanPipeline does, decoded one video at a time."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents.device)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents.device)
    videos = torch.cat([vae.decode((x * std + mean).to(vae.dtype)).sample for x in latents.split(1)])
    return (videos.float() / 2 + 0.5).clamp(0, 1).transpose(1, 2)


def main(args):
    """Train, write the outputs, and return the transformer that carries the trained adapters."""
    try:  # every ValueError until the loop starts is a bad input: one sentence, exit status 2, nothing written
        accelerator, weight_dtype = make_accelerator(args, allow_fsdp=True)
        logger.info(accelerator.state, main_process_only=False)

        # -------------------------------------------------------------- models: one base, two adapters
        prompts = load_prompts(args)
        with random_stream_kept(accelerator):  # the same draws on every library version
            transformer, real_transformer, vae, text_pipeline, reward = load_models(
                args, accelerator.device, weight_dtype
            )
        vae.requires_grad_(False).to(accelerator.device).eval()
        save_extra = functools.partial(save_student_lora, args=args)  # checkpoints hold diffusers' LoRA format too
        transformer, model, updates, global_step = prepare_adapters(
            accelerator, transformer, LORA_TARGET_MODULES, args, save_extra
        )
        if real_transformer is not None and accelerator.distributed_type == DistributedType.FSDP:
            # accelerate shards a model only with its optimizer: shard the frozen teacher's blocks as the config
            # shards the base's.
            from torch.distributed.fsdp import fully_shard  # FSDP2 (make_accelerator checks) needs torch >= 2.6

            for block in real_transformer.blocks:
                fully_shard(block)
            fully_shard(real_transformer)
        shape = latent_shape(args, args.train_batch_size, model, vae)
        check_reward(reward, args, prompts, accelerator.device)
    except ValueError as error:
        exit_bad_input(SCRIPT, error)

    embed = PromptEmbeddings(text_pipeline, args.max_sequence_length, weight_dtype)
    sigmas = student_scheduler(args.num_student_steps, args.student_timestep_shift).sigmas.to(accelerator.device)
    num_groups = args.train_batch_size // args.group_size
    microbatch_size = args.microbatch_size

    # ------------------------------------------------------------------ training loop (Algorithm 1)
    validation_prompts = args.validation_prompts or prompts[:4]
    validate = functools.partial(log_validation, accelerator, model, vae, embed, sigmas, args, validation_prompts)
    loop = TrainingLoop(accelerator, args, updates, global_step, "amd-wan", validate)
    for global_step, student_turn in loop:
        logs = {}

        # 1. K videos per prompt, the text encoded once per prompt; the student runs one of its steps, the same on
        # every process so that every rank runs the same number of forwards (FSDP gathers weights in each).
        batch_prompts = [prompts[i] for i in torch.randint(0, len(prompts), (num_groups,)).tolist()]
        batch_prompts = [p for p in batch_prompts for _ in range(args.group_size)]
        prompt_embeds = embed(batch_prompts, accelerator.device)
        step_index = torch.randint(0, args.num_student_steps, (1,), device=accelerator.device)
        step_index = broadcast(step_index).item()
        x_in = student_input(model, prompt_embeds, sigmas, step_index, shape, accelerator.device, microbatch_size)
        sigma_student = sigmas[step_index].expand(shape[0])
        with torch.no_grad():  # the group without grad; the student's pass with grad comes per microbatch below
            x = predict_x0(model, STUDENT, x_in, sigma_student, prompt_embeds, microbatch_size)

        # 2. Reward-aware diagnosis (Eq. 12): rewards of the decoded videos, advantages within each group.
        if reward is None:  # plain DMD: nothing to decode or score
            rewards, advantages = None, torch.zeros(shape[0], device=accelerator.device)
        else:
            rewards = score(reward, to_videos(x, vae), batch_prompts)
            advantages = group_advantages(rewards, args.group_size)  # a non-finite reward gets advantage 0

        # 3. Student update: re-noise, score with real (cond / negative prompt) and fake teachers, compose
        # (Eqs. 7-10); the student's pass with grad per microbatch, each loss its share of the batch mean.
        if student_turn:
            estimates = teacher_estimates(args, model, real_transformer, embed, x, prompt_embeds)
            x0_real_cond, x0_real_uncond, x0_fake = estimates

            def student_losses():
                for part in torch.arange(shape[0], device=accelerator.device).split(microbatch_size or shape[0]):
                    x_part = predict_x0(transformer, STUDENT, x_in[part], sigma_student[part], prompt_embeds[part])
                    loss = student_loss(
                        x_part, x0_real_cond[part], x0_real_uncond[part], x0_fake[part], advantages[part],
                        operator=args.operator, guidance_scale=args.real_guidance_scale, sensitivity=args.sensitivity,
                    )  # fmt: skip
                    yield loss * len(part) / shape[0]

            logs.update(updates.step(STUDENT, student_losses(), global_step))

        # 4. Fake teacher update: diffusion loss on the detached videos, weighted by W(a) (Eq. 14).
        losses = fake_losses(args, transformer, model, x, prompt_embeds, advantages, weight_dtype)
        logs.update(updates.step(FAKE, losses, global_step))
        loop.end_step(logs, rewards, advantages)

    # ------------------------------------------------------------------ outputs
    loop.finish(functools.partial(save_outputs, args))
    return model


def teacher_estimates(args, model, real_transformer, embed, x, prompt_embeds):
    """The teachers' clean estimates of the student's videos ``x`` re-noised at score noise levels (no grad): the
    real teacher's (the base with adapters off, or the separate one) with the prompt and, when guided, with the
    negative prompt, and the fake's."""
    levels = score_noise_levels(args, len(x), x.device, args.score_timestep_shift)
    x_t = flow_add_noise(x, torch.randn_like(x), levels)
    real, size = real_transformer or model, args.microbatch_size
    with torch.no_grad():
        x0_real_cond = predict_x0(real, None, x_t, levels, prompt_embeds, size)
        x0_real_uncond = x0_real_cond
        if args.real_guidance_scale != 1:
            negative = embed([args.negative_prompt], x.device).expand_as(prompt_embeds)
            x0_real_uncond = predict_x0(real, None, x_t, levels, negative, size)
        x0_fake = predict_x0(model, FAKE, x_t, levels, prompt_embeds, size)
    return x0_real_cond, x0_real_uncond, x0_fake


def fake_losses(args, transformer, model, x, prompt_embeds, advantages, weight_dtype):
    """The fake teacher's flow-matching losses on the detached videos ``x``, weighted by W(a) (Eq. 14), at noise
    levels drawn as for the scores (drawn now), one per microbatch, each its share of the batch mean."""
    levels = score_noise_levels(args, len(x), x.device, args.score_timestep_shift)
    noise = torch.randn_like(x)
    weights = fake_sample_weights(advantages, args.sharpen)

    def losses():
        for part in torch.arange(len(x), device=x.device).split(args.microbatch_size or len(x)):
            use_adapter(model, FAKE)
            noisy = flow_add_noise(x[part], noise[part], levels[part]).to(weight_dtype)
            timestep = levels[part] * NUM_TRAIN_TIMESTEPS
            velocity = transformer(noisy, timestep=timestep, encoder_hidden_states=prompt_embeds[part]).sample
            target = flow_model_target(x[part], noise[part])
            yield weighted_denoising_loss(velocity, target, weights[part]) * len(part) / len(x)

    return losses()


@torch.no_grad()
def log_validation(accelerator, model, vae, embed, sigmas, args, prompts, global_step):
    """Student videos for fixed seeds, in its own steps: a GIF in the output folder and the trackers."""
    with validation_rng(accelerator, args.seed):
        prompt_embeds = embed(prompts, accelerator.device)
        shape = latent_shape(args, len(prompts), model, vae)
        latents = sample_student(model, prompt_embeds, sigmas, shape, accelerator.device, args.microbatch_size)
        videos = to_videos(latents, vae)
    return save_and_log_video_grid(accelerator, videos, args.output_dir, global_step)


def save_student_lora(folder, student, args, weight_name="pytorch_lora_weights.safetensors"):
    """``weight_name`` for ``WanPipeline.load_lora_weights`` (the ``student`` adapter's state dict with its LoRA
    config in the metadata) and the scheduler that samples it, in ``scheduler/``."""
    config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, target_modules=LORA_TARGET_MODULES)
    WanPipeline.save_lora_weights(
        folder,
        transformer_lora_layers=student,
        transformer_lora_adapter_metadata=config.to_dict(),
        weight_name=weight_name,
    )
    student_scheduler(args.num_student_steps, args.student_timestep_shift).save_pretrained(
        os.path.join(folder, "scheduler")
    )


def save_outputs(args, student):
    """The student LoRA, its scheduler and a model card with the 4-step loading snippet."""
    save_student_lora(args.output_dir, student, args)
    steps = args.num_student_steps
    write_model_card(
        args.output_dir,
        base_model=args.pretrained_model_name_or_path,
        title=f"{os.path.basename(os.path.normpath(args.output_dir))}: {steps}-step Wan2.1 LoRA distilled with AMD",
        description=(
            f"A {steps}-step LoRA student of `{args.pretrained_model_name_or_path}` trained with Adaptive Matching "
            f"Distillation (operator `{args.operator}`, reward `{args.reward}`). Sample it with the "
            "`FlowMatchEulerDiscreteScheduler` saved in `scheduler/` and no guidance (`guidance_scale=1.0`)."
        ),
        usage=(
            "import torch\n"
            "from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline\n"
            "from diffusers.utils import export_to_video\n\n"
            f'pipe = WanPipeline.from_pretrained("{args.pretrained_model_name_or_path}", torch_dtype=torch.bfloat16)\n'
            'pipe.to("cuda")\n'
            f'out = "{args.hub_model_id or args.output_dir}"\n'
            'pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(out, subfolder="scheduler")\n'
            'pipe.load_lora_weights(out, weight_name="pytorch_lora_weights.safetensors")\n'
            f'video = pipe("a cat surfing a wave", height={args.height}, width={args.width}, '
            f"num_frames={args.num_frames}, num_inference_steps={steps}, guidance_scale=1.0).frames[0]\n"
            'export_to_video(video, "cat.mp4", fps=16)'
        ),
        settings={
            **amd_settings(args),
            "num_student_steps": steps,
            "student_timestep_shift": args.student_timestep_shift,
            "score_timestep_shift": args.score_timestep_shift,
            "resolution": f"{args.height}x{args.width}x{args.num_frames}",
        },
        images=latest_validation(args.output_dir),
        tags=["wan", "text-to-video", "lora"],
    )


if __name__ == "__main__":
    main(parse_args())
