#!/usr/bin/env python
"""Adaptive Matching Distillation for class-conditional SiT / DiT flow models.

    accelerate launch train_amd_sit.py \
        --pretrained_model_name_or_path ./sit-xl-2-256 --pretrained_vae_model_name_or_path stabilityai/sd-vae-ft-ema \
        --reward dinov2 --reward_model_name_or_path facebook/dinov2-large-imagenet1k-1-layer \
        --train_batch_size 32 --group_size 4 --output_dir sit-amd-4step

One frozen ``DiTTransformer2DModel`` carries two LoRA adapters: ``student`` (the few-step generator) and
``fake`` (the fake teacher); with adapters disabled it is the real teacher. SiT's interpolant:
``x_t = t x0 + (1 - t) noise``, t = 1 clean, velocity ``x0 - noise`` (``amd_utils.parameterization``).
A step updates the fake teacher; every ``--fake_update_ratio``-th step also updates the student.
With ``--gan_loss_weight`` / ``--fake_gan_loss_weight`` and real images (``--train_data_dir``, class folders),
DMD2's GAN term joins both losses: a discriminator head on the fake's middle block (``amd_utils.gan``).
The output folder loads with ``DiffusionPipeline.from_pretrained(output_dir, trust_remote_code=True)``
and samples in the student's steps. Convert an original SiT checkpoint with
``scripts/convert_sit_to_diffusers.py`` first.
"""

import argparse
import functools
import os

import torch
from accelerate.logging import get_logger
from diffusers import AutoencoderKL, DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler
from peft import LoraConfig
from safetensors.torch import save_file

from amd_utils.gan import (
    DiscriminatorHead,
    discriminator_loss,
    generator_gan_loss,
    output_of,
    sample_gradient_surrogate,
    tokens_to_grid,
)
from amd_utils.hub import amd_settings, write_model_card
from amd_utils.images import save_and_log_grid
from amd_utils.lora import FAKE, STUDENT, merged_base_state_dict, use_adapter
from amd_utils.objective import fake_sample_weights, group_advantages, student_loss, weighted_denoising_loss
from amd_utils.parameterization import sit_add_noise, sit_model_target, sit_x0
from amd_utils.pipeline_sit import use_sit_time_embedding
from amd_utils.real_images import RealImages, add_gan_arguments, check_gan_args, gan_enabled
from amd_utils.rewards import DINOV2_CLASSIFIER, load_reward, score
from amd_utils.sit import save_sit_pipeline
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

# Attention, feed-forward and the adaLN modulation that carries time and class into every block.
LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "norm1.linear"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog=SCRIPT, description="Adaptive Matching Distillation for SiT / DiT flow models."
    )
    group = parser.add_argument_group("models and reward")
    group.add_argument(
        "--pretrained_model_name_or_path",
        required=True,
        help="SiT pipeline folder or Hub id (transformer/ in DiT format).",
    )
    group.add_argument(
        "--pretrained_vae_model_name_or_path", default=None,
        help="VAE of a latent model (e.g. stabilityai/sd-vae-ft-ema); default: the base folder's vae/, if any.",
    )  # fmt: skip
    group.add_argument(
        "--reward",
        default="dinov2",
        help=(
            "'dinov2', 'my_module:my_function', or 'none' (plain DMD with --operator dmd --no_sharpen: nothing "
            "decoded or scored)."
        ),
    )
    group.add_argument("--reward_model_name_or_path", default=DINOV2_CLASSIFIER)
    add_amd_arguments(parser)
    add_gan_arguments(parser, "label")
    group = parser.add_argument_group("SiT")
    group.add_argument(
        "--real_guidance_scale",
        type=float,
        default=1.5,
        help="CFG scale w of the real teacher, standard form uncond + w (cond - uncond).",
    )
    group.add_argument(
        "--student_timesteps",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5, 0.75],
        help="SiT times (0 = noise) the student denoises from; the first must be 0.",
    )
    group.add_argument(
        "--validation_class_labels", type=int, nargs="+", default=None, help="Default: the first 8 classes."
    )
    add_optimization_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(output_dir="sit-amd")
    args = parser.parse_args(argv)
    check_shared_args(parser, args)
    check_gan_args(parser, args)
    t = args.student_timesteps
    if t[0] != 0.0 or any(b <= a for a, b in zip(t, t[1:])) or t[-1] >= 1.0:
        parser.error(f"--student_timesteps must rise from 0 (pure noise) and stay below 1 (clean), got {t}.")
    return args


def load_models(args, device, dtype):
    """The frozen base transformer, the VAE (None for pixel-space models) and the reward (None for 'none')."""
    check_pipeline(args.pretrained_model_name_or_path, {"transformer": "DiTTransformer2DModel"}, "a SiT / DiT")
    try:
        transformer = DiTTransformer2DModel.from_pretrained(
            args.pretrained_model_name_or_path, subfolder="transformer", torch_dtype=dtype
        )
    except (OSError, ValueError):  # weights missing or unreadable
        raise ValueError(
            f"cannot load a DiT transformer from {args.pretrained_model_name_or_path!r}: give a SiT pipeline folder "
            "(see scripts/convert_sit_to_diffusers.py) or a Hub id that is reachable."
        ) from None
    use_sit_time_embedding(transformer)
    vae_path = args.pretrained_vae_model_name_or_path
    vae_source, subfolder = (vae_path, None) if vae_path else (args.pretrained_model_name_or_path, "vae")
    try:
        vae = AutoencoderKL.from_pretrained(vae_source, subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError):
        if vae_path:
            raise ValueError(f"cannot load the VAE {vae_path!r}: not on disk and the Hub cannot be reached.") from None
        vae = None  # a pixel-space model
    reward = load_reward(args.reward, args.reward_model_name_or_path, device)
    return transformer, vae, reward


def predict_x0(model, adapter, x_t, t, class_labels):
    """Clean estimate from the network with ``adapter`` active (None: the real teacher)."""
    use_adapter(model, adapter)
    velocity = model(x_t, timestep=t, class_labels=class_labels).sample[:, : x_t.shape[1]]
    return sit_x0(x_t, velocity, t)


def fake_forward(network, model, x_t, t, class_labels):
    """The fake teacher's velocity and its features after the middle transformer block, as a token grid: the
    features of the GAN head, the DiT counterpart of the UNet mid block DMD2 reads (and of the EDM UNet's
    bottleneck, its ImageNet discriminator's input). ``network`` is ``model`` or its DDP wrapper."""
    use_adapter(model, FAKE)
    with output_of(model.transformer_blocks[len(model.transformer_blocks) // 2 - 1]) as features:
        velocity = network(x_t, timestep=t, class_labels=class_labels).sample[:, : x_t.shape[1]]
    return velocity, tokens_to_grid(features[0])


def discriminator_head(config):
    """DMD2's GAN head for what :func:`fake_forward` reads: the token grid of a DiT of ``config``."""
    return DiscriminatorHead(
        config.num_attention_heads * config.attention_head_dim, config.sample_size // config.patch_size
    )


def student_input(model, class_labels, student_timesteps, num_steps, shape, device):
    """DMD2's backward simulation: run the student's first ``num_steps`` steps from pure noise without grad
    (predict x0, re-noise it to the next timestep with fresh noise); returns the input of the next step."""
    x = torch.randn(shape, device=device)
    with torch.no_grad():
        for i in range(num_steps):
            t = torch.full((shape[0],), student_timesteps[i], device=device)
            x0 = predict_x0(model, STUDENT, x, t, class_labels)
            x = sit_add_noise(x0, torch.randn_like(x0), torch.full_like(t, student_timesteps[i + 1]))
    return x


@torch.no_grad()
def to_images(x, vae):
    """Samples to images in [0, 1]: through the VAE for latent models, else pixels stored in [-1, 1]."""
    if vae is not None:
        x = vae.decode(x.to(vae.dtype) / vae.config.scaling_factor).sample
    return (x.float() / 2 + 0.5).clamp(0, 1)


def main(args):
    """Train, write the outputs, and return the network that carries the trained adapters."""
    try:  # every ValueError until the loop starts is a bad input: one sentence, exit status 2, nothing written
        accelerator, weight_dtype = make_accelerator(args)
        logger.info(accelerator.state, main_process_only=False)

        # -------------------------------------------------------------- models: one base, two adapters
        with random_stream_kept(accelerator):  # the same draws on every library version
            transformer, vae, reward = load_models(args, accelerator.device, weight_dtype)
        num_classes = transformer.config.num_embeds_ada_norm  # class id num_classes is the null (CFG) class
        channels, size = transformer.config.in_channels, transformer.config.sample_size
        if vae is not None:
            vae.requires_grad_(False).to(accelerator.device)
        real_images, head = None, None
        if gan_enabled(
            args
        ):  # DMD2's GAN term: real images, and a head on the fake's middle (SiT-XL/2: 1152 x 16 x 16)
            resolution = size * (2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1)
            real_images = RealImages(args, "label", resolution, channels, vae, accelerator, num_classes)
            head = discriminator_head(transformer.config)
        transformer, model, updates, global_step = prepare_adapters(
            accelerator, transformer, LORA_TARGET_MODULES, args, head=head
        )
        if reward is not None:  # a reward that breaks on a batch fails here, before anything is written
            zeros = torch.zeros(args.group_size, channels, size, size, device=accelerator.device)
            score(
                reward, to_images(zeros, vae), torch.zeros(args.group_size, dtype=torch.long, device=accelerator.device)
            )
    except ValueError as error:
        exit_bad_input(SCRIPT, error)

    validation_labels = args.validation_class_labels or list(range(min(8, num_classes)))
    shape = (args.train_batch_size, channels, size, size)
    num_groups = args.train_batch_size // args.group_size
    num_student_steps = len(args.student_timesteps)

    # ------------------------------------------------------------------ training loop (Algorithm 1)
    validate = functools.partial(log_validation, accelerator, model, vae, args, validation_labels)
    loop = TrainingLoop(accelerator, args, updates, global_step, "amd-sit", validate)
    for global_step, student_turn in loop:
        logs = {}

        # 1. K samples per class label; the student runs one of its steps (backward simulation).
        class_labels = torch.randint(0, num_classes, (num_groups,), device=accelerator.device).repeat_interleave(
            args.group_size
        )
        step_index = torch.randint(0, num_student_steps, ()).item()  # one student step per batch
        x_in = student_input(model, class_labels, args.student_timesteps, step_index, shape, accelerator.device)
        t_student = torch.full((shape[0],), args.student_timesteps[step_index], device=accelerator.device)
        with torch.set_grad_enabled(student_turn):
            x = predict_x0(transformer if student_turn else model, STUDENT, x_in, t_student, class_labels)

        # 2. Reward-aware diagnosis (Eq. 12): rewards of the decoded samples, advantages within each group.
        if reward is None:  # plain DMD: nothing to decode or score
            rewards, advantages = None, torch.zeros(shape[0], device=accelerator.device)
        else:
            rewards = score(reward, to_images(x.detach(), vae), class_labels)
            advantages = group_advantages(rewards, args.group_size)  # a non-finite reward gets advantage 0

        # 3. Student update: re-noise, score with real (cond / uncond) and fake teachers, compose (Eqs. 7-10).
        if student_turn:
            t = 1 - score_noise_levels(args, shape[0], accelerator.device)  # SiT time: 1 clean
            x_t = sit_add_noise(x.detach(), torch.randn_like(x), t)
            with torch.no_grad():
                if args.real_guidance_scale != 1:
                    null_labels = torch.full_like(class_labels, num_classes)
                    both = predict_x0(
                        model, None, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([class_labels, null_labels])
                    )
                    x0_real_cond, x0_real_uncond = both.chunk(2)
                else:
                    x0_real_cond = x0_real_uncond = predict_x0(model, None, x_t, t, class_labels)
                x0_fake = predict_x0(model, FAKE, x_t, t, class_labels)
            loss = student_loss(
                x, x0_real_cond, x0_real_uncond, x0_fake, advantages,
                operator=args.operator, guidance_scale=args.real_guidance_scale, sensitivity=args.sensitivity,
            )  # fmt: skip
            if args.gan_loss_weight > 0:  # DMD2's GAN term (F_ext of Eq. 27): the fake's head judges x, noised anew
                x_leaf = x.detach().requires_grad_()
                t = (1 - score_noise_levels(args, shape[0], accelerator.device)).to(x.dtype)
                x_t = sit_add_noise(x_leaf, torch.randn_like(x), t)
                gan_loss = generator_gan_loss(head(fake_forward(model, model, x_t, t, class_labels)[1]))  # no DDP here
                loss = loss + args.gan_loss_weight * sample_gradient_surrogate(x, gan_loss, x_leaf)
                logs["loss/gan_generator"] = gan_loss.item()
            logs.update(updates.step(STUDENT, loss, global_step))

        # 4. Fake teacher update: diffusion loss on the detached samples, weighted by W(a) (Eq. 14).
        sample = x.detach()
        t = (1 - score_noise_levels(args, shape[0], accelerator.device)).to(sample.dtype)
        noise = torch.randn_like(sample)
        x_t, labels = sit_add_noise(sample, noise, t), class_labels
        if args.fake_gan_loss_weight > 0:  # DMD2's diffusion GAN: real images join the batch, each at its own level
            real, real_labels = real_images.batch(torch.randint(0, len(real_images), (shape[0],)).tolist())
            t_real = (1 - score_noise_levels(args, shape[0], accelerator.device)).to(sample.dtype)
            x_t = torch.cat([x_t, sit_add_noise(real, torch.randn_like(real), t_real)])
            t, labels = torch.cat([t, t_real]), torch.cat([labels, torch.tensor(real_labels, device=labels.device)])
        velocity, features = fake_forward(transformer, model, x_t, t, labels)
        fake_loss = weighted_denoising_loss(
            velocity[: shape[0]], sit_model_target(sample, noise), fake_sample_weights(advantages, args.sharpen)
        )
        if args.fake_gan_loss_weight > 0:  # the head and the fake adapter learn to tell real from generated
            gan_loss = discriminator_loss(*updates.head(features).chunk(2))
            fake_loss = fake_loss + args.fake_gan_loss_weight * gan_loss
            logs["loss/gan_discriminator"] = gan_loss.item()
        logs.update(updates.step(FAKE, fake_loss, global_step))
        loop.end_step(logs, rewards, advantages)

    # ------------------------------------------------------------------ outputs
    loop.finish(lambda student: save_outputs(args, model, student, vae, validation_labels))
    return model


@torch.no_grad()
def log_validation(accelerator, model, vae, args, class_labels, global_step):
    """Student samples for fixed seeds, in its own steps: a grid PNG in the output folder and the trackers."""
    with validation_rng(accelerator, args.seed):
        labels = torch.tensor(class_labels, device=accelerator.device)
        shape = (len(labels), model.config.in_channels, model.config.sample_size, model.config.sample_size)
        last = len(args.student_timesteps) - 1
        x_in = student_input(model, labels, args.student_timesteps, last, shape, accelerator.device)
        t = torch.full((len(labels),), args.student_timesteps[last], device=accelerator.device)
        images = to_images(predict_x0(model, STUDENT, x_in, t, labels), vae)
    return save_and_log_grid(accelerator, images, args.output_dir, global_step)


def save_outputs(args, model, student, vae, class_labels):
    """The merged student as a SiT pipeline that samples in the student's steps, the ``student`` adapter's state
    dict alone, and a model card."""
    merged = DiTTransformer2DModel.from_config(model.config)
    merged.load_state_dict(merged_base_state_dict(model, STUDENT))
    sigmas = [1.0 - t for t in args.student_timesteps]
    scheduler = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    save_sit_pipeline(args.output_dir, merged, scheduler, vae=vae, default_sigmas=sigmas)
    lora_dir = os.path.join(args.output_dir, "student_lora")
    os.makedirs(lora_dir, exist_ok=True)
    save_file(student, os.path.join(lora_dir, "adapter_model.safetensors"))
    LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, target_modules=LORA_TARGET_MODULES).save_pretrained(
        lora_dir
    )
    write_model_card(
        args.output_dir,
        base_model=args.pretrained_model_name_or_path,
        title=f"{os.path.basename(os.path.normpath(args.output_dir))}: {len(sigmas)}-step SiT distilled with AMD",
        description=(
            f"A {len(sigmas)}-step student of `{args.pretrained_model_name_or_path}` trained with Adaptive Matching "
            f"Distillation (operator `{args.operator}`, reward `{args.reward}`). The folder holds the merged "
            "student as a `SiTPipeline` and the student LoRA alone in `student_lora/`."
        ),
        usage=(
            "from diffusers import DiffusionPipeline\n\n"
            f'pipe = DiffusionPipeline.from_pretrained("{args.hub_model_id or args.output_dir}", '
            "trust_remote_code=True)\n"
            f"images = pipe(class_labels={class_labels}).images  # {len(sigmas)} steps, no guidance"
        ),
        settings={
            **amd_settings(args),
            "student_timesteps": args.student_timesteps,
            "reward_model": args.reward_model_name_or_path,
        },
        images=latest_validation(args.output_dir),
        tags=["sit", "class-conditional"],
    )


if __name__ == "__main__":
    main(parse_args())
