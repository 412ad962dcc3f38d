#!/usr/bin/env python
"""Adaptive Matching Distillation for a streaming Wan2.1 student: a block-causal, 4-step LoRA student that generates
a video chunk by chunk with a rolling KV cache (LongLive's first stage, Self-Forcing's rollout).

    accelerate launch train_amd_wan_streaming.py \
        --pretrained_model_name_or_path Wan-AI/Wan2.1-T2V-1.3B-Diffusers \
        --student_model_name_or_path ode_init-diffusers --prompts_file vidprom_filtered_extended.txt \
        --reward my_video_reward:score --train_batch_size 4 --group_size 4 --mixed_precision bf16 \
        --gradient_checkpointing --text_encoder_device cpu --output_dir wan-amd-streaming

The base ``WanTransformer3DModel`` carries the ``fake`` LoRA adapter (bidirectional); with adapters off it is the
real teacher (or give ``--real_score_model_name_or_path``). The student is a LoRA adapter on the causal checkpoint
``--student_model_name_or_path`` (Self-Forcing's ``ode_init.pt`` converted with
``scripts/convert_wan_causal_to_diffusers.py``), or on the base itself when none is given. Its attention is made
block-causal with a cache, window and sink by hooks on the stock model (``amd_utils/pipeline_wan_streaming.py``).

A step rolls the student out as Self-Forcing does: blocks of ``--num_frame_per_block`` latent frames, each denoised
up to one exit step drawn for the whole video (the same on every process), then rerun at noise level 0 to write its
clean keys and values into the cache; all without grad. The reward, the operator and sharpening act on the whole
rollout as in ``train_amd_wan.py``, from which this trainer takes its flags and its Wan parts. On the student's
turn each block's exit step is rerun with grad, from its saved input and cache, and backpropagated alone: the cache
carries no gradient (Self-Forcing writes it without grad), so this is the rollout's gradient, one block's graph at a
time. The output folder holds the student LoRA (and its EMA), the scheduler, ``pipeline.py`` (the streaming
pipeline) and a model card.
"""

import functools
import os
import shutil

import torch
from accelerate.logging import get_logger
from accelerate.utils import broadcast
from diffusers import WanTransformer3DModel
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import load_file

import train_amd_wan
from amd_utils import pipeline_wan_streaming
from amd_utils.hub import amd_settings, write_model_card
from amd_utils.images import save_and_log_video_grid
from amd_utils.lora import FAKE, STUDENT, adapter_parameters, sharded_like, unsharded, use_adapter
from amd_utils.objective import group_advantages, student_loss
from amd_utils.pipeline_wan_streaming import make_streaming, predict_x0, stream_video
from amd_utils.prompts import load_prompts
from amd_utils.rewards import score
from amd_utils.training import (
    TrainingLoop,
    exit_bad_input,
    latest_validation,
    make_accelerator,
    prepare_adapters,
    random_stream_kept,
)
from train_amd_wan import (
    LORA_TARGET_MODULES,
    PromptEmbeddings,
    check_reward,
    fake_losses,
    latent_shape,
    load_models,
    save_student_lora,
    student_scheduler,
    teacher_estimates,
    to_videos,
)

logger = get_logger(__name__)
SCRIPT = os.path.basename(__file__)
EMA_FILE = "pytorch_lora_weights_ema.safetensors"  # the student adapter's EMA, in diffusers' LoRA format


def parse_args(argv=None):
    parser = train_amd_wan.build_parser(SCRIPT, "Adaptive Matching Distillation for a streaming Wan2.1 student.")
    group = parser.add_argument_group("streaming student")
    group.add_argument(
        "--student_model_name_or_path",
        default=None,
        help="The causal student's WanTransformer3DModel folder (e.g. Self-Forcing's ode_init.pt converted with "
        "scripts/convert_wan_causal_to_diffusers.py); default: the base transformer.",
    )
    group.add_argument("--num_frame_per_block", type=int, default=3, help="Latent frames generated per block.")
    group.add_argument(
        "--local_attn_size",
        type=int,
        default=12,
        help="Latent frames a block attends to, the sink and its own block included; -1: every earlier frame.",
    )
    group.add_argument("--sink_size", type=int, default=3, help="First latent frames every block attends to.")
    group.add_argument("--ema_decay", type=float, default=0.99, help="EMA of the student adapter; 0: none.")
    group.add_argument("--ema_start_step", type=int, default=200, help="The EMA starts as a copy at this step.")
    # LongLive's stage 1 (configs/longlive_train_init.yaml; default_config.yaml's weight decay 0.01).
    parser.set_defaults(output_dir="wan-amd-streaming", adam_weight_decay=0.01)
    args = parser.parse_args(argv)
    train_amd_wan.check_args(parser, args)
    latent_frames = (args.num_frames - 1) // 4 + 1
    if args.num_frame_per_block < 1 or latent_frames % args.num_frame_per_block:
        parser.error(
            f"--num_frames {args.num_frames} gives {latent_frames} latent frames, not a multiple of "
            f"--num_frame_per_block {args.num_frame_per_block}: make it one."
        )
    window = args.local_attn_size - args.sink_size  # the frames besides the sink
    if args.sink_size < 0 or (args.local_attn_size != -1 and window < args.num_frame_per_block):
        parser.error(
            "--local_attn_size must be -1 or leave room for a block besides the sink: local_attn_size - sink_size "
            f">= num_frame_per_block, got {args.local_attn_size} - {args.sink_size} < {args.num_frame_per_block}."
        )  # fmt: skip
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema_decay must be in [0, 1), got {args.ema_decay}.")
    return args


def load_student_base(path, dtype):
    """The causal student's own base transformer (a WanTransformer3DModel folder, or a pipeline's transformer/)."""
    subfolder = "transformer" if os.path.isfile(os.path.join(path, "model_index.json")) else None
    try:
        with torch.random.fork_rng(devices=[]):  # loading draws random numbers: keep the run's stream as without it
            return WanTransformer3DModel.from_pretrained(path, subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError):
        raise ValueError(
            f"cannot load the student's transformer from {path!r}: give a WanTransformer3DModel folder (see "
            "scripts/convert_wan_causal_to_diffusers.py)."
        ) from None


class StudentEMA:
    """Exponential moving average of the student adapter's weights, as LongLive keeps one of its generator: a copy
    of the weights at the first student update from ``start_step`` on, then ``ema = decay ema + (1 - decay) w``
    after every student update."""

    def __init__(self, decay, start_step):
        self.decay, self.start_step, self.weights = decay, start_step, None

    @torch.no_grad()
    def update(self, model, global_step):
        if self.decay == 0 or global_step < self.start_step:
            return
        if self.weights is None:
            self.weights = {k: p.detach().clone() for k, p in adapter_parameters(model, STUDENT).items()}
        else:
            for key, p in adapter_parameters(model, STUDENT).items():
                self.weights[key].lerp_(p.detach(), 1 - self.decay)

    def state_dict(self):
        return {k: unsharded(v).cpu().contiguous() for k, v in self.weights.items()}

    def load(self, model, path):
        """Read the EMA from a file in diffusers' LoRA format (keys under ``transformer.``)."""
        params = adapter_parameters(model, STUDENT)
        saved = {k.removeprefix("transformer."): v for k, v in load_file(path).items()}
        self.weights = {k: sharded_like(v, params[k]).to(params[k].device) for k, v in saved.items()}


def main(args):
    """Train, write the outputs, and return the network that carries the trained student adapter."""
    ema = StudentEMA(args.ema_decay, args.ema_start_step)
    try:  # every ValueError until the loop starts is a bad input: one sentence, exit status 2, nothing written
        accelerator, weight_dtype = make_accelerator(args)
        logger.info(accelerator.state, main_process_only=False)

        # -------------------------------------------------------------- models: the base with the fake, the student
        prompts = load_prompts(args)
        with random_stream_kept(accelerator):  # the same draws on every library version
            transformer, real_transformer, vae, text_pipeline, reward = load_models(
                args, accelerator.device, weight_dtype
            )
            student_base = None
            if args.student_model_name_or_path:
                student_base = load_student_base(args.student_model_name_or_path, weight_dtype)
        vae.requires_grad_(False).to(accelerator.device).eval()

        def save_extra(folder, student):  # checkpoints hold diffusers' LoRA format and the EMA too
            save_student_lora(folder, student, args)
            if ema.weights is not None:
                save_student_lora(folder, ema.state_dict(), args, EMA_FILE)

        def load_extra(folder, student_model):
            if os.path.isfile(os.path.join(folder, EMA_FILE)):
                ema.load(student_model, os.path.join(folder, EMA_FILE))

        transformer, model, updates, global_step = prepare_adapters(
            accelerator, transformer, LORA_TARGET_MODULES, args, save_extra, student_network=student_base,
            load_extra=load_extra,
        )  # fmt: skip
        student_network, student_model = updates.networks[STUDENT], updates.models[STUDENT]
        stream = make_streaming(student_model, args.local_attn_size, args.sink_size)
        shape = latent_shape(args, args.train_batch_size, model, vae)
        check_reward(reward, args, prompts, accelerator.device)
    except ValueError as error:
        exit_bad_input(SCRIPT, error)

    embed = PromptEmbeddings(text_pipeline, args.max_sequence_length, weight_dtype)
    sigmas = student_scheduler(args.num_student_steps, args.student_timestep_shift).sigmas.to(accelerator.device)
    num_groups = args.train_batch_size // args.group_size
    block = args.num_frame_per_block

    # ------------------------------------------------------------------ training loop (Algorithm 1)
    validation_prompts = args.validation_prompts or prompts[:4]
    validate = functools.partial(
        log_validation, accelerator, student_model, stream, vae, embed, sigmas, args, validation_prompts
    )
    loop = TrainingLoop(accelerator, args, updates, global_step, "amd-wan-streaming", validate)
    for global_step, student_turn in loop:
        logs = {}

        # 1. K videos per prompt, rolled out block by block without grad, every block leaving the student's steps
        # at one exit step drawn for the whole video and shared by all processes (Self-Forcing's broadcast).
        batch_prompts = [prompts[i] for i in torch.randint(0, len(prompts), (num_groups,)).tolist()]
        batch_prompts = [p for p in batch_prompts for _ in range(args.group_size)]
        prompt_embeds = embed(batch_prompts, accelerator.device)
        exit_step = broadcast(torch.randint(0, args.num_student_steps, (1,), device=accelerator.device)).item()
        use_adapter(student_model, STUDENT)
        noise = torch.randn(shape, device=accelerator.device)
        x, exits = stream_video(student_model, stream, noise, prompt_embeds, sigmas, block, exit_step)

        # 2. Reward-aware diagnosis (Eq. 12): rewards of the decoded videos, advantages within each group.
        if reward is None:  # plain DMD: nothing to decode or score
            rewards, advantages = None, torch.zeros(shape[0], device=accelerator.device)
        else:
            rewards = score(reward, to_videos(x, vae), batch_prompts)
            advantages = group_advantages(rewards, args.group_size)  # a non-finite reward gets advantage 0

        # 3. Student update: the teachers score the whole video (bidirectional); the loss (Eqs. 7-10) is composed
        # on it, then each block's exit step is rerun with grad and backpropagated alone, per microbatch.
        if student_turn:
            estimates = teacher_estimates(args, model, real_transformer, embed, x, prompt_embeds)
            x_leaf = x.detach().requires_grad_(True)
            loss = student_loss(
                x_leaf, *estimates, advantages, operator=args.operator, guidance_scale=args.real_guidance_scale,
                sensitivity=args.sensitivity,
            )  # fmt: skip
            (gradient,) = torch.autograd.grad(loss, x_leaf)  # d loss / d video, DMD2's normalization included

            def student_losses():
                use_adapter(student_model, STUDENT)  # the teachers' passes left the fake active; step() keeps it
                for part in torch.arange(shape[0], device=accelerator.device).split(args.microbatch_size or shape[0]):
                    for start, x_in, cache in exits:
                        stream.restore(cache, part)
                        with stream.block(start):  # open until the backward: checkpointed blocks recompute in it
                            x0 = predict_x0(
                                student_network, stream, x_in[part], sigmas[exit_step], prompt_embeds[part], start
                            )
                            surrogate = (x0 * gradient[part, :, start : start + block]).sum()
                            # The loss's gradient; as value the loss's share, so that the logs show the loss.
                            share = len(part) / shape[0] * x0.shape[2] / shape[2]
                            yield surrogate + (share * loss.detach() - surrogate.detach())
                stream.reset()

            logs.update(updates.step(STUDENT, student_losses(), global_step))
            ema.update(student_model, global_step)

        # 4. Fake teacher update: diffusion loss on the detached rollout, weighted by W(a) (Eq. 14).
        losses = fake_losses(args, transformer, model, x, prompt_embeds, advantages, weight_dtype)
        logs.update(updates.step(FAKE, losses, global_step))
        loop.end_step(logs, rewards, advantages)

    # ------------------------------------------------------------------ outputs
    loop.finish(functools.partial(save_outputs, args, ema))
    return student_model


@torch.no_grad()
def sample_latents(model, stream, embed, sigmas, args, prompts, seed, shape, device):
    """The student's videos (latents of ``shape``) in all its steps, streamed block by block, from a generator
    seeded with ``seed``: what ``WanStreamingPipeline`` samples with the same generator."""
    use_adapter(model, STUDENT)
    generator = torch.Generator(device).manual_seed(seed)
    prompt_embeds = embed(prompts, device)
    noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    return stream_video(model, stream, noise, prompt_embeds, sigmas, args.num_frame_per_block, generator=generator)[0]


@torch.no_grad()
def log_validation(accelerator, model, stream, vae, embed, sigmas, args, prompts, global_step):
    """Student videos for a fixed seed, streamed in its own steps: a GIF in the output folder and the trackers."""
    shape = latent_shape(args, len(prompts), model, vae)
    latents = sample_latents(model, stream, embed, sigmas, args, prompts, args.seed, shape, accelerator.device)
    return save_and_log_video_grid(accelerator, to_videos(latents, vae), args.output_dir, global_step)


def save_outputs(args, ema, student):
    """The student LoRA (and its EMA), its scheduler, the streaming pipeline as ``pipeline.py`` and a model card."""
    save_student_lora(args.output_dir, student, args)
    if ema.weights is not None:
        save_student_lora(args.output_dir, ema.state_dict(), args, EMA_FILE)
    shutil.copy(pipeline_wan_streaming.__file__, os.path.join(args.output_dir, "pipeline.py"))
    steps, base = args.num_student_steps, args.pretrained_model_name_or_path
    out = args.hub_model_id or args.output_dir
    long = 4 * (2 * ((args.num_frames - 1) // 4 + 1) - 1) + 1  # twice the training clip's latent frames
    stream_settings = (
        f"num_frame_per_block={args.num_frame_per_block}, local_attn_size={args.local_attn_size}, "
        f"sink_size={args.sink_size}"
    )
    load_student = ""
    if args.student_model_name_or_path:
        load_student = (
            f'pipe.transformer = WanTransformer3DModel.from_pretrained("{args.student_model_name_or_path}", '
            "torch_dtype=torch.bfloat16)\n"
        )
    write_model_card(
        args.output_dir,
        base_model=base,
        title=f"{os.path.basename(os.path.normpath(args.output_dir))}: streaming {steps}-step Wan2.1 LoRA "
        "distilled with AMD",
        description=(
            f"A block-causal {steps}-step LoRA student trained with Adaptive Matching Distillation (operator "
            f"`{args.operator}`, reward `{args.reward}`) through Self-Forcing's streaming rollout, on the causal base "
            f"`{args.student_model_name_or_path or base}`. It generates {args.num_frame_per_block} latent frames at a "
            f"time with a rolling KV cache ({stream_settings}), so videos may be longer than the "
            f"{args.num_frames} frames it was trained on. `pipeline.py` is the streaming pipeline; "
            + (f"`{EMA_FILE}` holds the EMA of the adapter." if ema.weights is not None else "")
        ),
        usage=(
            "import torch\n"
            "from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel\n"
            "from diffusers.utils import export_to_video\n\n"
            f'out = "{out}"\n'
            f'pipe = DiffusionPipeline.from_pretrained("{base}", custom_pipeline=out, trust_remote_code=True,\n'
            "                                         torch_dtype=torch.bfloat16)\n"
            f"{load_student}"
            'pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(out, subfolder="scheduler")\n'
            'pipe.load_lora_weights(out, weight_name="pytorch_lora_weights.safetensors")\n'
            'pipe.to("cuda")\n'
            f'video = pipe("a cat surfing a wave", height={args.height}, width={args.width}, num_frames={long}, '
            f"num_inference_steps={steps}, {stream_settings}).frames[0]\n"
            'export_to_video(video, "cat.mp4", fps=16)'
        ),
        settings={
            **amd_settings(args),
            "num_student_steps": steps,
            "student_timestep_shift": args.student_timestep_shift,
            "score_timestep_shift": args.score_timestep_shift,
            "resolution": f"{args.height}x{args.width}x{args.num_frames}",
            "student_model": args.student_model_name_or_path or base,
            "num_frame_per_block": args.num_frame_per_block,
            "local_attn_size": args.local_attn_size,
            "sink_size": args.sink_size,
            "ema_decay": args.ema_decay,
            "ema_start_step": args.ema_start_step,
        },
        images=latest_validation(args.output_dir),
        tags=["wan", "text-to-video", "lora", "streaming"],
    )


if __name__ == "__main__":
    main(parse_args())
