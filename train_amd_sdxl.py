#!/usr/bin/env python
"""Adaptive Matching Distillation for SDXL: a 4-step LoRA student, reward-aware.

    accelerate launch train_amd_sdxl.py \
        --pretrained_model_name_or_path stabilityai/stable-diffusion-xl-base-1.0 \
        --pretrained_vae_model_name_or_path madebyollin/sdxl-vae-fp16-fix \
        --prompts_file prompts.txt --reward hpsv2 --train_batch_size 8 --group_size 4 \
        --mixed_precision bf16 --gradient_checkpointing --output_dir sdxl-amd-4step

One frozen ``UNet2DConditionModel`` carries two LoRA adapters: ``student`` (the 4-step generator) and
``fake`` (the fake teacher); with adapters disabled it is the real teacher, guided with all-zero
unconditional embeddings (DMD2's SDXL recipe). DDPM epsilon prediction, clean estimates in float64
(``amd_utils.parameterization``). A step updates the fake teacher; every ``--fake_update_ratio``-th step
also updates the student. With ``--gan_loss_weight`` / ``--fake_gan_loss_weight`` and real images
(``--train_data_dir``), DMD2's GAN term joins both losses: a discriminator head on the fake's mid block
(``amd_utils.gan``). The output folder holds ``pytorch_lora_weights.safetensors`` for
``StableDiffusionXLPipeline.load_lora_weights`` and a model card with the 4-step loading snippet.
"""

import argparse
import functools
import os

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from peft import LoraConfig
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

from amd_utils.gan import (
    DiscriminatorHead,
    discriminator_loss,
    generator_gan_loss,
    output_of,
    sample_gradient_surrogate,
)
from amd_utils.hub import amd_settings, write_model_card
from amd_utils.images import save_and_log_grid
from amd_utils.lora import FAKE, STUDENT, use_adapter
from amd_utils.objective import fake_sample_weights, group_advantages, student_loss, weighted_denoising_loss
from amd_utils.parameterization import ddpm_add_noise, ddpm_model_target, ddpm_x0
from amd_utils.prompts import add_prompt_arguments, check_prompt_args, load_prompts
from amd_utils.real_images import RealImages, add_gan_arguments, check_gan_args, gan_enabled
from amd_utils.rewards import load_reward, score
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
    validation_rng,
)

logger = get_logger(__name__)
SCRIPT = os.path.basename(__file__)

# What diffusers' SDXL LoRA distillation (LCM-LoRA) adapts: attention, feed-forward, resnet convolutions and
# the time embedding projections.
LORA_TARGET_MODULES = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
]  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog=SCRIPT, description="Adaptive Matching Distillation for SDXL (4-step LoRA student)."
    )
    group = parser.add_argument_group("models, reward and prompts")
    group.add_argument("--pretrained_model_name_or_path", required=True, help="SDXL pipeline folder or Hub id.")
    group.add_argument(
        "--pretrained_vae_model_name_or_path",
        default=None,
        help="e.g. madebyollin/sdxl-vae-fp16-fix; default: the pipeline's vae/.",
    )
    group.add_argument(
        "--reward",
        default="hpsv2",
        help=(
            "hpsv2 (HPSv2.1), hpsv2.0, pickscore, clip, 'my_module:my_function', or 'none' (plain DMD with "
            "--operator dmd --no_sharpen: nothing decoded or scored)."
        ),
    )
    group.add_argument(
        "--reward_model_name_or_path",
        "--reward_model_path",
        default=None,
        help="The reward's weights: a folder or Hub id, for hpsv2 the .pt file; default: the reward's own.",
    )
    add_prompt_arguments(group)
    add_amd_arguments(parser)
    add_gan_arguments(parser, "caption")
    group = parser.add_argument_group("SDXL")
    group.add_argument("--resolution", type=int, default=1024)
    group.add_argument(
        "--real_guidance_scale",
        type=float,
        default=8.0,
        help="CFG scale w of the real teacher, uncond + w (cond - uncond), uncond = zero embeddings.",
    )
    group.add_argument(
        "--student_timesteps",
        type=int,
        nargs="+",
        default=[999, 749, 499, 249],
        help="The student's DDPM timesteps, falling, the first the noisiest.",
    )
    group.add_argument(
        "--reward_resolution",
        type=int,
        default=512,
        help="Decoded samples are resized to this before the reward (which resizes again to its own input).",
    )
    group.add_argument("--validation_prompts", nargs="+", default=None, help="Default: the first 4 training prompts.")
    add_optimization_arguments(parser)
    add_output_arguments(parser)
    # DMD2's LoRA SDXL recipe (docs/sdxl.md: "Recipe defaults"): AdamW at 5e-5 with weight decay 0.01, gradients
    # clipped at 10, a short constant-with-warm-up schedule, LoRA rank 64 with alpha 8.
    parser.set_defaults(
        output_dir="sdxl-amd", train_batch_size=8, learning_rate=5e-5, adam_weight_decay=0.01, max_grad_norm=10.0,
        lr_scheduler="constant_with_warmup", lr_warmup_steps=8, lora_rank=64, lora_alpha=8,
    )  # fmt: skip
    args = parser.parse_args(argv)
    check_shared_args(parser, args)
    check_gan_args(parser, args)
    check_prompt_args(parser, args)
    t = args.student_timesteps
    if any(b >= a for a, b in zip(t, t[1:])) or not 0 < t[-1] <= t[0] < 1000:
        parser.error(f"--student_timesteps must fall within 1..999, the first the noisiest, got {t}.")
    return args


def load_models(args, device, dtype):
    """The frozen UNet, VAE, both text encoders with their tokenizers, the noise schedule, and the reward."""
    path = args.pretrained_model_name_or_path
    check_pipeline(path, {"unet": "UNet2DConditionModel", "text_encoder_2": "CLIPTextModelWithProjection"}, "an SDXL")
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
        text_encoders = [
            CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype),
            CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", torch_dtype=dtype),
        ]
        tokenizers = [AutoTokenizer.from_pretrained(path, subfolder=name) for name in ("tokenizer", "tokenizer_2")]
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    except (OSError, ValueError):  # weights missing or unreadable
        raise ValueError(
            f"cannot load an SDXL pipeline from {path!r}: give a local pipeline folder or a Hub id that is reachable."
        ) from None
    vae_source, subfolder = (
        (args.pretrained_vae_model_name_or_path, None) if args.pretrained_vae_model_name_or_path else (path, "vae")
    )
    try:
        vae = AutoencoderKL.from_pretrained(vae_source, subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError):
        raise ValueError(f"cannot load the VAE {vae_source!r}: not on disk and the Hub cannot be reached.") from None
    reward = load_reward(args.reward, args.reward_model_name_or_path, device)
    return unet, vae, text_encoders, tokenizers, scheduler, reward


@torch.no_grad()
def encode_prompts(prompts, text_encoders, tokenizers):
    """SDXL's conditioning: both encoders' penultimate hidden states side by side, and the second encoder's
    pooled projection."""
    hidden_states = []
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        output = encoder(ids.to(encoder.device), output_hidden_states=True)
        hidden_states.append(output.hidden_states[-2])
    return torch.cat(hidden_states, dim=-1), output[0]


def predict_x0(model, adapter, x_t, t, condition, schedule):
    """Clean estimate (float64 inside, Eq. of ``ddpm_x0``) from the UNet with ``adapter`` active (None: the
    real teacher). ``condition``: (prompt embeddings, pooled embeddings, time ids), one row per sample."""
    use_adapter(model, adapter)
    prompt_embeds, pooled, time_ids = condition
    output = model(
        x_t, t, encoder_hidden_states=prompt_embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
    ).sample
    return ddpm_x0(x_t, output, schedule.alphas_cumprod, t, schedule.config.prediction_type)


def fake_forward(network, model, x_t, t, condition):
    """The fake teacher's UNet output and its mid-block output: the features DMD2's GAN head reads (its
    ``classify_forward`` runs the down and mid blocks). ``network`` is ``model`` or its DDP wrapper."""
    use_adapter(model, FAKE)
    prompt_embeds, pooled, time_ids = condition
    with output_of(model.mid_block) as features:
        output = network(
            x_t, t, encoder_hidden_states=prompt_embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
        ).sample
    return output, features[0]


def student_input(model, condition, schedule, student_timesteps, num_steps, shape, device):
    """DMD2's backward simulation: the student's first ``num_steps`` steps from pure noise without grad
    (predict x0, re-noise it to the next timestep with fresh noise); returns the input of the next step."""
    x = torch.randn(shape, device=device)
    with torch.no_grad():
        for i in range(num_steps):
            t = torch.full((shape[0],), student_timesteps[i], device=device, dtype=torch.long)
            x0 = predict_x0(model, STUDENT, x.to(model.dtype), t, condition, schedule)
            x = ddpm_add_noise(
                x0, torch.randn_like(x0), schedule.alphas_cumprod, torch.full_like(t, student_timesteps[i + 1])
            )
    return x


@torch.no_grad()
def to_images(latents, vae, resolution=None):
    """Latents to images in [0, 1] (the VAE decodes one image at a time: ``enable_slicing``), resized to
    ``resolution`` if given."""
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    if resolution is not None and images.shape[-1] != resolution:
        images = F.interpolate(images, size=(resolution, resolution), mode="bicubic", antialias=True).clamp(0, 1)
    return images


def main(args):
    """Train, write the outputs, and return the UNet that carries the trained adapters."""
    try:  # every ValueError until the loop starts is a bad input: one sentence, exit status 2, nothing written
        accelerator, weight_dtype = make_accelerator(args)
        logger.info(accelerator.state, main_process_only=False)

        # -------------------------------------------------------------- models: one base, two adapters
        prompts = load_prompts(args) if args.prompts_file or not gan_enabled(args) else None  # else: the captions
        with random_stream_kept(accelerator):  # the same draws on every library version
            unet, vae, text_encoders, tokenizers, schedule, reward = load_models(args, accelerator.device, weight_dtype)
        for module in (vae, *text_encoders):
            module.requires_grad_(False).to(accelerator.device).eval()
        vae.enable_slicing()
        schedule.alphas_cumprod = schedule.alphas_cumprod.to(accelerator.device)
        latent_size = args.resolution // (2 ** (len(vae.config.block_out_channels) - 1))
        real_images, head = None, None
        if gan_enabled(args):  # DMD2's GAN term: real latents, and a head on the fake's mid block (1280 x 32 x 32)
            real_images = RealImages(args, "caption", args.resolution, 3, vae, accelerator)
            prompts = prompts or real_images.conditions
            head = DiscriminatorHead(
                unet.config.block_out_channels[-1], latent_size // 2 ** (len(unet.config.block_out_channels) - 1)
            )
        save_extra = functools.partial(save_student_lora, args=args)  # checkpoints hold diffusers' LoRA format too
        unet, model, updates, global_step = prepare_adapters(
            accelerator, unet, LORA_TARGET_MODULES, args, save_extra, head
        )
        if reward is not None:  # a reward that breaks on a batch fails here, before anything is written
            grey = torch.full(
                (args.group_size, 3, args.reward_resolution, args.reward_resolution), 0.5, device=accelerator.device
            )
            score(reward, grey, prompts[:1] * args.group_size)
    except ValueError as error:
        exit_bad_input(SCRIPT, error)

    validation_prompts = args.validation_prompts or prompts[:4]
    shape = (args.train_batch_size, model.config.in_channels, latent_size, latent_size)
    num_groups = args.train_batch_size // args.group_size
    time_ids = torch.tensor(
        [args.resolution, args.resolution, 0, 0, args.resolution, args.resolution], device=accelerator.device
    )
    time_ids = time_ids.to(weight_dtype).repeat(args.train_batch_size, 1)  # original size, crop, target size
    num_train_timesteps = schedule.config.num_train_timesteps
    # The score noise levels as DDPM timesteps (level 0.98 -> t = 980).
    min_score_t, max_score_t = (min(round(level * num_train_timesteps), num_train_timesteps - 1)
                                for level in (args.min_score_noise_level, args.max_score_noise_level))  # fmt: skip

    # ------------------------------------------------------------------ training loop (Algorithm 1)
    validate = functools.partial(
        log_validation, accelerator, model, vae, text_encoders, tokenizers, schedule, args, validation_prompts
    )
    loop = TrainingLoop(accelerator, args, updates, global_step, "amd-sdxl", validate)
    for global_step, student_turn in loop:
        logs = {}

        # 1. K samples per prompt, the text encoded once for every network; the student runs one of its steps.
        batch_prompts = [
            prompts[i] for i in torch.randint(0, len(prompts), (num_groups,)).tolist() for _ in range(args.group_size)
        ]
        prompt_embeds, pooled = encode_prompts(batch_prompts, text_encoders, tokenizers)
        condition = (prompt_embeds, pooled, time_ids)
        step_index = torch.randint(0, len(args.student_timesteps), ()).item()  # one student step per batch
        x_in = student_input(model, condition, schedule, args.student_timesteps, step_index, shape, accelerator.device)
        t_student = torch.full(
            (shape[0],), args.student_timesteps[step_index], device=accelerator.device, dtype=torch.long
        )
        with torch.set_grad_enabled(student_turn):
            x = predict_x0(
                unet if student_turn else model, STUDENT, x_in.to(weight_dtype), t_student, condition, schedule
            )

        # 2. Reward-aware diagnosis (Eq. 12): rewards of the decoded samples, advantages within each group.
        if reward is None:  # plain DMD: nothing to decode or score
            rewards, advantages = None, torch.zeros(shape[0], device=accelerator.device)
        else:
            rewards = score(reward, to_images(x.detach(), vae, args.reward_resolution), batch_prompts)
            advantages = group_advantages(rewards, args.group_size)  # a non-finite reward gets advantage 0

        # 3. Student update: re-noise, score with real (cond / zero-uncond) and fake teachers, compose (Eqs. 7-10).
        if student_turn:
            t = torch.randint(min_score_t, max_score_t + 1, (shape[0],), device=accelerator.device)
            x_t = ddpm_add_noise(x.detach(), torch.randn_like(x), schedule.alphas_cumprod, t).to(weight_dtype)
            with torch.no_grad():
                if args.real_guidance_scale != 1:  # unconditional: all-zero text embeddings (DMD2's SDXL)
                    zero = (torch.zeros_like(prompt_embeds), torch.zeros_like(pooled))
                    both = (torch.cat([prompt_embeds, zero[0]]), torch.cat([pooled, zero[1]]), time_ids.repeat(2, 1))
                    x0_real_cond, x0_real_uncond = predict_x0(
                        model, None, torch.cat([x_t, x_t]), torch.cat([t, t]), both, schedule
                    ).chunk(2)
                else:
                    x0_real_cond = x0_real_uncond = predict_x0(model, None, x_t, t, condition, schedule)
                x0_fake = predict_x0(model, FAKE, x_t, t, condition, schedule)
            loss = student_loss(
                x, x0_real_cond, x0_real_uncond, x0_fake, advantages,
                operator=args.operator, guidance_scale=args.real_guidance_scale, sensitivity=args.sensitivity,
            )  # fmt: skip
            if args.gan_loss_weight > 0:  # DMD2's GAN term (F_ext of Eq. 27): the fake's head judges x, noised anew
                x_leaf = x.detach().requires_grad_()
                t = torch.randint(0, num_train_timesteps, (shape[0],), device=accelerator.device)
                x_t = ddpm_add_noise(x_leaf, torch.randn_like(x), schedule.alphas_cumprod, t).to(weight_dtype)
                gan_loss = generator_gan_loss(head(fake_forward(model, model, x_t, t, condition)[1]))  # no DDP here
                loss = loss + args.gan_loss_weight * sample_gradient_surrogate(x, gan_loss, x_leaf)
                logs["loss/gan_generator"] = gan_loss.item()
            logs.update(updates.step(STUDENT, loss, global_step))

        # 4. Fake teacher update: diffusion loss on the detached samples, weighted by W(a) (Eq. 14), over all
        # noise levels as DMD2 trains its fake UNet (the student is scored on [min, max] only).
        sample = x.detach()
        t = torch.randint(0, num_train_timesteps, (shape[0],), device=accelerator.device)
        noise = torch.randn_like(sample)
        target = ddpm_model_target(sample, noise, schedule.alphas_cumprod, t, schedule.config.prediction_type)
        x_t, fake_condition = ddpm_add_noise(sample, noise, schedule.alphas_cumprod, t).to(weight_dtype), condition
        if args.fake_gan_loss_weight > 0:  # DMD2's diffusion GAN: real latents join the batch, each at its own t
            real, captions = real_images.batch(torch.randint(0, len(real_images), (shape[0],)).tolist())
            t_real = torch.randint(0, num_train_timesteps, (shape[0],), device=accelerator.device)
            real_t = ddpm_add_noise(real, torch.randn_like(real), schedule.alphas_cumprod, t_real).to(weight_dtype)
            x_t, t = torch.cat([x_t, real_t]), torch.cat([t, t_real])
            real_embeds, real_pooled = encode_prompts(captions, text_encoders, tokenizers)
            fake_condition = (
                torch.cat([prompt_embeds, real_embeds]),
                torch.cat([pooled, real_pooled]),
                time_ids.repeat(2, 1),
            )
        output, features = fake_forward(unet, model, x_t, t, fake_condition)
        fake_loss = weighted_denoising_loss(output[: shape[0]], target, fake_sample_weights(advantages, args.sharpen))
        if args.fake_gan_loss_weight > 0:  # the head and the fake adapter learn to tell real from generated
            gan_loss = discriminator_loss(*updates.head(features).chunk(2))
            fake_loss = fake_loss + args.fake_gan_loss_weight * gan_loss
            logs["loss/gan_discriminator"] = gan_loss.item()
        logs.update(updates.step(FAKE, fake_loss, global_step))
        loop.end_step(logs, rewards, advantages)

    # ------------------------------------------------------------------ outputs
    loop.finish(functools.partial(save_outputs, args))
    return model


@torch.no_grad()
def log_validation(accelerator, model, vae, text_encoders, tokenizers, schedule, args, prompts, global_step):
    """Student samples for fixed seeds, in its own steps: a grid PNG in the output folder and the trackers."""
    with validation_rng(accelerator, args.seed):
        prompt_embeds, pooled = encode_prompts(prompts, text_encoders, tokenizers)
        time_ids = torch.tensor(
            [[args.resolution, args.resolution, 0, 0, args.resolution, args.resolution]] * len(prompts)
        )
        condition = (prompt_embeds, pooled, time_ids.to(accelerator.device, prompt_embeds.dtype))
        latent_size = args.resolution // (2 ** (len(vae.config.block_out_channels) - 1))
        shape = (len(prompts), model.config.in_channels, latent_size, latent_size)
        last = len(args.student_timesteps) - 1
        x_in = student_input(model, condition, schedule, args.student_timesteps, last, shape, accelerator.device)
        t = torch.full((len(prompts),), args.student_timesteps[last], device=accelerator.device, dtype=torch.long)
        images = to_images(predict_x0(model, STUDENT, x_in.to(model.dtype), t, condition, schedule), vae)
    return save_and_log_grid(accelerator, images, args.output_dir, global_step, columns=4)


def save_student_lora(folder, student, args):
    """``pytorch_lora_weights.safetensors`` for ``StableDiffusionXLPipeline.load_lora_weights``: the student
    adapter with its LoRA config in the metadata. The keys stay in peft's format: diffusers'
    ``convert_state_dict_to_diffusers`` renames only the attention keys, and the loader, seeing peft keys
    first, then drops the renamed ones."""
    config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, target_modules=LORA_TARGET_MODULES)
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=student, unet_lora_adapter_metadata=config.to_dict()
    )


def save_outputs(args, student):
    """The student LoRA and a model card with the 4-step loading snippet."""
    save_student_lora(args.output_dir, student, args)
    steps = len(args.student_timesteps)
    write_model_card(
        args.output_dir,
        base_model=args.pretrained_model_name_or_path,
        title=f"{os.path.basename(os.path.normpath(args.output_dir))}: {steps}-step SDXL LoRA distilled with AMD",
        description=(
            f"A {steps}-step LoRA student of `{args.pretrained_model_name_or_path}` trained with Adaptive Matching "
            f"Distillation (operator `{args.operator}`, reward `{args.reward}`). Sample it with `LCMScheduler` at "
            "the student's timesteps and no guidance, as DMD2's LoRA is sampled."
        ),
        usage=(
            "import torch\n"
            "from diffusers import LCMScheduler, StableDiffusionXLPipeline\n\n"
            f'pipe = StableDiffusionXLPipeline.from_pretrained("{args.pretrained_model_name_or_path}", '
            'torch_dtype=torch.float16).to("cuda")\n'
            f'pipe.load_lora_weights("{args.hub_model_id or args.output_dir}", '
            'weight_name="pytorch_lora_weights.safetensors")\n'
            "pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)\n"
            f'image = pipe("a photo of a cat", num_inference_steps={steps}, timesteps={args.student_timesteps}, '
            "guidance_scale=0).images[0]"
        ),
        settings={**amd_settings(args), "student_timesteps": args.student_timesteps, "resolution": args.resolution},
        images=latest_validation(args.output_dir),
        tags=["stable-diffusion-xl", "text-to-image", "lora"],
    )


if __name__ == "__main__":
    main(parse_args())
