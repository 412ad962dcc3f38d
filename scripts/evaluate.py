#!/usr/bin/env python
"""Score 4-step students against each other and their teacher on the same prompts (or classes) and seeds.

    # SDXL: the paper's HPDv2 / COCO protocols (App. A): HPSv2, PickScore, ImageReward; FID against real images
    python scripts/evaluate.py --pretrained_model_name_or_path stabilityai/stable-diffusion-xl-base-1.0 \\
        --student amd=sdxl-amd-4step --student dmd=sdxl-dmd-4step --prompts_file coco_val2014_captions.txt \\
        --num_samples 10000 --resolution 1024 --metrics hpsv2 imagereward fid --fid_reference coco_val2014/ \\
        --output_dir eval-sdxl
    # SiT: FID and Inception Score against ImageNet-train statistics (App. B)
    python scripts/evaluate.py --pretrained_model_name_or_path sit-xl-2-256 --student amd=sit-amd \\
        --num_samples 50000 --metrics fid is --fid_reference imagenet_train_256.npz --output_dir eval-sit
    # Wan2.1: frame rewards (or a video reward module:function) on 81-frame videos, written as MP4
    python scripts/evaluate.py --pretrained_model_name_or_path Wan-AI/Wan2.1-T2V-1.3B-Diffusers \\
        --student amd=wan-amd-4step --prompts_file prompts.txt --num_samples 100 --output_dir eval-wan

Rows: the teacher at ``--teacher_steps`` with CFG ``--teacher_guidance_scale``, then every ``--student``, each
sampled as its model card says (SDXL LoRA: LCMScheduler at the card's ``student_timesteps``, no guidance; SiT
folder: its own scheduler and noise levels; Wan LoRA: the scheduler it ships in ``scheduler/``, the card's
``num_student_steps``, ``guidance_scale=1.0``). Sample i of every row uses prompt (or class) i and seed
``--seed + i``, also as the global seed for Wan, whose stochastic scheduler draws from it. Samples are written to
``<output_dir>/samples/<row>/`` as they are made (videos as MP4 through imageio-ffmpeg, as diffusers'
``export_to_video`` writes them); a rerun skips those on disk. Writes ``results.md`` (a row per model, a column
per metric), ``results.json`` (the same and the settings) and ``grid.png`` (a row per model, the same prompt and
seed per column; for videos their middle frames, and ``grid.gif`` the whole videos).
"""

import argparse
import ast
import functools
import hashlib
import json
import os
import re
import subprocess
import sys

# The repository root is not an installed package: make ``amd_utils`` importable when run as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from amd_utils.images import image_grid  # noqa: E402
from amd_utils.metrics import feature_statistics, frechet_distance, inception_score  # noqa: E402
from amd_utils.prompts import add_prompt_arguments, load_prompts  # noqa: E402
from amd_utils.rewards import load_reward, load_video_reward  # noqa: E402

REWARD_METRICS = ("hpsv2", "pickscore", "clip", "dinov2", "imagereward")
SET_METRICS = ("fid", "is")  # computed from Inception features of the whole set
DEFAULT_METRICS = {
    "sdxl": ["hpsv2", "pickscore", "imagereward"], "sit": ["fid", "is"],
    "wan": ["frames:hpsv2", "frames:pickscore", "frames:clip"],
}  # fmt: skip
# The teacher row's defaults: the CFG each trainer distils towards (its --real_guidance_scale default).
TEACHER_GUIDANCE = {"sdxl": 8.0, "sit": 1.5, "wan": 4.0}
VIDEO_FPS = 16  # Wan2.1's (the paper evaluates 81 frames at 16 fps)
# VBench's 16 dimensions (vbench 0.1.5, VBench.build_full_dimension_list); its custom-prompt mode refuses the six that
# need the object, colour or scene labels of its own prompt suite (VBench.check_dimension_requires_extra_info).
VBENCH_DIMENSIONS = (
    "subject_consistency", "background_consistency", "aesthetic_quality", "imaging_quality", "object_class",
    "multiple_objects", "color", "spatial_relationship", "scene", "temporal_style", "overall_consistency",
    "human_action", "temporal_flickering", "motion_smoothness", "dynamic_degree", "appearance_style",
)  # fmt: skip
VBENCH_SUITE_ONLY = ("object_class", "multiple_objects", "scene", "appearance_style", "color", "spatial_relationship")
VBENCH_VIDEOS_PER_PROMPT = 5  # VBench's standard mode looks for "<prompt>-0.mp4" to "<prompt>-4.mp4"
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp")
# The trainers' LoRA file, named to load_lora_weights: diffusers 0.34 to 0.39 refuse a local folder offline without it.
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
# Settings that change the samples: a rerun with other values must not reuse the samples on disk.
# Sample i depends on these and on i alone, so a rerun with a larger --num_samples adds samples.
SAMPLING_SETTINGS = ("pretrained_model_name_or_path", "students", "teacher_steps", "teacher_guidance_scale",
                     "resolution", "seed", "mixed_precision", "conditions_sha256", "num_frames", "height",
                     "width")  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate AMD students and their teacher on the same seeds.")
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="The base SDXL or SiT pipeline.")
    parser.add_argument(
        "--student",
        dest="students",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="A train_amd_sdxl.py LoRA folder or Hub id, or a train_amd_sit.py output folder; repeat for more.",
    )
    parser.add_argument("--teacher_steps", type=int, default=50)
    parser.add_argument("--teacher_guidance_scale", type=float, default=None, help="Default: 8 for SDXL, 1.5 for SiT.")
    add_prompt_arguments(parser.add_argument_group("prompts (SDXL)"))
    parser.add_argument(
        "--class_labels", type=int, nargs="+", default=None, help="SiT: the classes, cycled (default: all)."
    )
    parser.add_argument("--num_samples", type=int, default=1000, help="Samples per model.")
    parser.add_argument("--resolution", type=int, default=1024, help="SDXL: the size the samples are made at.")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help=f"{', '.join(REWARD_METRICS + SET_METRICS)}; for Wan frames:<hpsv2, pickscore or clip> "
                        "and module:function video rewards. Default: hpsv2 pickscore imagereward for SDXL, fid is "
                        "for SiT, the three frame rewards for Wan.")  # fmt: skip
    group = parser.add_argument_group("videos (Wan)")
    group.add_argument("--num_frames", type=int, default=81)
    group.add_argument("--height", type=int, default=480)
    group.add_argument("--width", type=int, default=832)
    group.add_argument("--reward_num_frames", type=int, default=4, help="Frames a frames: reward averages over.")
    group.add_argument(
        "--vbench_dimensions",
        nargs="+",
        default=[],
        metavar="DIMENSION",
        help="VBench dimensions to score the videos with (the vbench package): in its custom-prompt mode on your "
        "prompts, or in its standard mode with --vbench_suite.",
    )
    group.add_argument(
        "--vbench_suite",
        action="store_true",
        help="Sample VBench's own prompt suite instead of --prompts_file: the prompts of the --vbench_dimensions, "
        f"{VBENCH_VIDEOS_PER_PROMPT} videos each (--num_samples follows), scored in VBench's standard mode.",
    )
    parser.add_argument(
        "--metric_model",
        action="append",
        default=[],
        metavar="METRIC=PATH",
        help="Local weights of a metric: hpsv2=HPS_v2.1_compressed.pt, pickscore=folder, clip=folder, "
        "dinov2=folder, imagereward=ImageReward.pt, inception=torch-fidelity's Inception .pth (FID, IS).",
    )
    parser.add_argument(
        "--fid_reference", default=None, help="A folder of real images, or a .npz with mu and sigma (FID)."
    )
    parser.add_argument(
        "--fid_resolution",
        type=int,
        default=256,
        help="Samples and real images are centre-cropped and resized (bicubic) to this before Inception.",
    )
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid_samples", type=int, default=8, help="Columns of grid.png.")
    parser.add_argument("--mixed_precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--output_dir", default="evaluation")
    args = parser.parse_args(argv)

    for name in ("teacher_steps", "num_samples", "batch_size", "resolution", "fid_resolution", "num_frames",
                 "height", "width", "reward_num_frames"):  # fmt: skip
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    _check_folder_or_hub_id(parser, "--pretrained_model_name_or_path", args.pretrained_model_name_or_path)
    args.students = dict(_parse_pair(parser, "--student", spec, name_from_path=True) for spec in args.students)
    for name, path in args.students.items():
        _check_folder_or_hub_id(parser, f"the student {name!r}", path)
    args.metric_model = dict(_parse_pair(parser, "--metric_model", spec) for spec in args.metric_model)
    for metric in args.metric_model:
        if metric not in REWARD_METRICS + ("inception",):
            parser.error(f"--metric_model names {metric!r}: use one of {', '.join(REWARD_METRICS + ('inception',))}.")
    for dimension in args.vbench_dimensions:
        if dimension not in VBENCH_DIMENSIONS:
            parser.error(
                f"--vbench_dimensions: unknown VBench dimension {dimension!r}: use {', '.join(VBENCH_DIMENSIONS)}."
            )
        if dimension in VBENCH_SUITE_ONLY and not args.vbench_suite:
            parser.error(
                f"--vbench_dimensions: {dimension!r} needs the labels of VBench's own prompt suite: add "
                "--vbench_suite, or leave it out."
            )
    if args.vbench_suite and not args.vbench_dimensions:
        parser.error("--vbench_suite samples the prompts of the --vbench_dimensions: name at least one.")
    if args.fid_reference is not None and not os.path.exists(args.fid_reference):
        parser.error(f"--fid_reference {args.fid_reference!r} does not exist: give a folder of images or a .npz.")
    return args


def _check_folder_or_hub_id(parser, what, path):
    """A Hub id (``owner/name``) is checked when it is loaded; anything else must be a folder."""
    is_hub_id = re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", path) is not None
    if not os.path.isdir(path) and not is_hub_id:
        parser.error(f"{what}: {path!r} is not a folder (nor a Hub id).")


def _parse_pair(parser, flag, spec, name_from_path=False):
    name, separator, value = spec.partition("=")
    if not separator:
        if not name_from_path:
            parser.error(f"{flag} takes NAME=PATH, got {spec!r}.")
        name, value = os.path.basename(os.path.normpath(spec)), spec
    if not name or not value:
        parser.error(f"{flag} takes NAME=PATH, got {spec!r}.")
    return name, value


# ----------------------------------------------------------------------------- models


def model_kind(path):
    """``sdxl``, ``sit`` or ``wan``, from the pipeline class named in ``model_index.json``."""
    from diffusers import DiffusionPipeline

    class_name = DiffusionPipeline.load_config(path)["_class_name"]
    if class_name == "StableDiffusionXLPipeline":
        return "sdxl"
    if class_name == "WanPipeline":
        return "wan"
    if class_name == "SiTPipeline" or (isinstance(class_name, list) and "SiTPipeline" in class_name):
        return "sit"
    raise ValueError(f"{path!r} holds a {class_name}: this script evaluates SDXL, SiT and Wan pipelines.")


def card_settings(path, trainer):
    """The settings table of the model card ``trainer`` wrote for the student ``path`` (a folder or Hub id):
    ``{name: value}``, values read as Python literals where they are one (numbers, lists), else as text."""
    card = os.path.join(path, "README.md")
    if not os.path.isdir(path):
        from huggingface_hub import hf_hub_download

        try:
            card = hf_hub_download(path, "README.md")
        except Exception as error:  # offline, missing repository or file: one sentence either way
            raise ValueError(f"cannot fetch the model card of the student {path!r} ({type(error).__name__}).") from None
    if not os.path.isfile(card):
        raise ValueError(f"{path!r} holds no model card (README.md): is it a {trainer} output?")
    settings = {}
    for name, value in re.findall(r"^\| `(\w+)` \| `([^`]*)` \|$", open(card, encoding="utf-8").read(), re.M):
        try:
            settings[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[name] = value
    return settings


def card_setting(path, name, trainer):
    """A setting of the student from its model card (the student's timesteps for SDXL, its number of steps for
    Wan): see :func:`card_settings`."""
    settings = card_settings(path, trainer)
    if name not in settings:
        raise ValueError(f"the model card of {path!r} states no {name}: is it a {trainer} output?")
    return settings[name]


def sdxl_rows(args, device, dtype):
    """``(row name, folder name, sample(prompts, generators) -> images in [0, 1])`` for the teacher, then for
    every student: the base pipeline with the student's LoRA, as its model card samples it."""
    from diffusers import LCMScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(args.pretrained_model_name_or_path, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    teacher_scheduler = pipe.scheduler

    def sample(prompts, generators, **settings):
        size = {"height": args.resolution, "width": args.resolution}
        return pipe(prompts, generator=generators, output_type="pt", **size, **settings).images

    w = args.teacher_guidance_scale
    teacher = {"num_inference_steps": args.teacher_steps, "guidance_scale": w}
    yield f"teacher, {args.teacher_steps} steps, w = {w:g}", "teacher", functools.partial(sample, **teacher)
    for name, path in args.students.items():
        timesteps = card_setting(path, "student_timesteps", "train_amd_sdxl.py")
        pipe.load_lora_weights(path, weight_name=LORA_WEIGHTS)
        pipe.scheduler = LCMScheduler.from_config(teacher_scheduler.config)
        student = {"num_inference_steps": len(timesteps), "timesteps": timesteps, "guidance_scale": 0}
        yield name, _folder_name(name), functools.partial(sample, **student)
        pipe.unload_lora_weights()
        pipe.scheduler = teacher_scheduler


def sit_rows(args, device, dtype):
    """The same for SiT: the teacher folder with CFG, then every student folder with its own scheduler and
    noise levels (``default_sigmas``) and no guidance."""
    from diffusers import DiffusionPipeline

    def load(path):
        pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True, torch_dtype=dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample(pipe, labels, generators, **settings):
        return pipe(class_labels=labels, generator=generators, output_type="pt", **settings).images

    w = args.teacher_guidance_scale
    teacher = load(args.pretrained_model_name_or_path)
    settings = {"num_inference_steps": args.teacher_steps, "guidance_scale": w}
    yield f"teacher, {args.teacher_steps} steps, w = {w:g}", "teacher", functools.partial(sample, teacher, **settings)
    for name, path in args.students.items():
        yield name, _folder_name(name), functools.partial(sample, load(path))


def wan_rows(args, device, dtype):
    """The same for Wan: the teacher with CFG and Wan's negative prompt (the trainer's unconditional), then every
    student LoRA with the scheduler it ships and no guidance. One video per call, the global seed set to the
    generator's: the student's stochastic scheduler re-noises from the global RNG. A streaming student
    (train_amd_wan_streaming.py) samples with its streaming pipeline, on its own causal base if it has one, with the
    block, window and sink of its card (its noise comes from the generator alone)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    from amd_utils.pipeline_wan_streaming import WanStreamingPipeline
    from train_amd_wan import WAN_NEGATIVE_PROMPT
    from train_amd_wan_streaming import load_student_base

    pipe = WanPipeline.from_pretrained(args.pretrained_model_name_or_path, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    teacher_scheduler = pipe.scheduler

    def sample(pipe, prompts, generators, **settings):
        videos = []
        for prompt, generator in zip(prompts, generators):
            torch.manual_seed(generator.initial_seed())
            size = {"height": args.height, "width": args.width, "num_frames": args.num_frames}
            videos.append(pipe(prompt, generator=generator, output_type="pt", **size, **settings).frames[0])
        return torch.stack(videos)

    w = args.teacher_guidance_scale
    teacher = {"num_inference_steps": args.teacher_steps, "guidance_scale": w, "negative_prompt": WAN_NEGATIVE_PROMPT}
    yield f"teacher, {args.teacher_steps} steps, w = {w:g}", "teacher", functools.partial(sample, pipe, **teacher)
    for name, path in args.students.items():
        settings = card_settings(path, "train_amd_wan.py")
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
        student, student_settings = pipe, {"num_inference_steps": settings["num_student_steps"], "guidance_scale": 1.0}
        if "num_frame_per_block" in settings:
            transformer = pipe.transformer
            if settings["student_model"] != args.pretrained_model_name_or_path:
                transformer = load_student_base(settings["student_model"], dtype).to(device)
            student = WanStreamingPipeline(**{**pipe.components, "transformer": transformer})
            student.set_progress_bar_config(disable=True)
            del student_settings["guidance_scale"]  # the streaming pipeline has none
            student_settings.update({k: settings[k] for k in ("num_frame_per_block", "local_attn_size", "sink_size")})
        student.scheduler = scheduler
        student.load_lora_weights(path, weight_name=LORA_WEIGHTS)
        yield name, _folder_name(name), functools.partial(sample, student, **student_settings)
        student.unload_lora_weights()
        pipe.scheduler = teacher_scheduler


def _folder_name(name):
    return "student_" + re.sub(r"[^\w.-]+", "_", name)


def conditions_for(args, kind):
    """The prompts (SDXL, Wan) or classes (SiT) that sample i takes the i-th of, cycled. With --vbench_suite, VBench's
    prompts for the dimensions, each ``VBENCH_VIDEOS_PER_PROMPT`` times in a row (and --num_samples set to match)."""
    if kind == "wan" and args.vbench_suite:
        if args.prompts_file or args.dataset_name:
            raise ValueError("--vbench_suite brings its own prompts: drop --prompts_file and --dataset_name.")
        suite = vbench_suite_prompts(args.vbench_dimensions)
        args.num_samples = VBENCH_VIDEOS_PER_PROMPT * len(suite)
        return [prompt for prompt in suite for _ in range(VBENCH_VIDEOS_PER_PROMPT)]
    if kind in ("sdxl", "wan"):
        if (args.prompts_file is None) == (args.dataset_name is None):
            raise ValueError(
                f"{kind.upper()} samples need prompts: give exactly one of --prompts_file or --dataset_name."
            )
        prompts = load_prompts(args)
    else:
        if args.prompts_file or args.dataset_name:
            raise ValueError("SiT is class-conditional: give --class_labels instead of prompts.")
        from diffusers import DiTTransformer2DModel

        config = DiTTransformer2DModel.load_config(args.pretrained_model_name_or_path, subfolder="transformer")
        prompts = args.class_labels or list(range(config["num_embeds_ada_norm"]))
    return prompts


# ----------------------------------------------------------------------------- sampling


def sample_row(args, sample, folder, conditions, device, suffix=".png"):
    """Make the samples of one row that are not on disk yet, ``--batch_size`` at a time: images, or videos
    (``suffix`` ".mp4")."""
    os.makedirs(folder, exist_ok=True)
    missing = [i for i in range(args.num_samples) if not os.path.exists(sample_path(folder, i, suffix))]
    bar = tqdm(total=args.num_samples, initial=args.num_samples - len(missing), desc=os.path.basename(folder))
    for start in range(0, len(missing), args.batch_size):
        index = missing[start : start + args.batch_size]
        generators = [torch.Generator(device).manual_seed(args.seed + i) for i in index]
        samples = sample([conditions[i % len(conditions)] for i in index], generators)
        for i, one in zip(index, samples):
            partial = sample_path(folder, i, ".partial" + suffix)  # complete files only on disk
            if suffix == ".png":
                to_pil(one).save(partial)
            else:
                write_video(one, partial)
            os.replace(partial, sample_path(folder, i, suffix))
        bar.update(len(index))
    bar.close()


def sample_path(folder, i, suffix=".png"):
    return os.path.join(folder, f"{i:06d}{suffix}")


def write_video(frames, path):
    """A video (F, 3, H, W) in [0, 1] as H.264 MP4 at 16 fps, through imageio-ffmpeg at the quality diffusers'
    ``export_to_video`` uses (imageio's 5 of 10)."""
    import imageio.v3 as iio

    array = (frames.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    iio.imwrite(path, array, extension=".mp4", fps=VIDEO_FPS, codec="libx264", quality=5, macro_block_size=1)


def load_videos(paths):
    """Videos from MP4 files as a float tensor (B, F, 3, H, W) in [0, 1]."""
    import imageio.v3 as iio

    batch = torch.from_numpy(np.stack([iio.imread(path, extension=".mp4") for path in paths])).float() / 255
    return batch.permute(0, 1, 4, 2, 3).contiguous()


def to_pil(image):
    """An image (C, H, W) in [0, 1] as 8-bit PIL: grayscale for C = 1, else RGB."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array.squeeze(2) if array.shape[2] == 1 else array)


def load_images(paths):
    """Samples as a float tensor (B, C, H, W) in [0, 1]: C = 1 for grayscale files (pixel-space digits), else 3."""
    images = [Image.open(path) for path in paths]
    arrays = [np.array(image) if image.mode == "L" else np.array(image.convert("RGB")) for image in images]
    batch = torch.from_numpy(np.stack(arrays)).float() / 255
    return (batch.unsqueeze(1) if batch.dim() == 3 else batch.permute(0, 3, 1, 2)).contiguous()


# ----------------------------------------------------------------------------- metrics


def load_metrics(args, kind, device):
    """Reward metrics ``(images, conditions) -> (B,)`` by name, and the Inception network if FID or IS is asked
    for. ImageReward is skipped, with one sentence, where it does not import."""
    metrics = args.metrics or DEFAULT_METRICS[kind]
    if kind != "wan" and args.vbench_dimensions:
        raise ValueError("VBench scores videos: give --vbench_dimensions with a Wan pipeline.")
    if kind == "wan":
        try:  # the MP4 encoder: without it no video can be written or read back
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise ValueError(
                "videos are written as MP4 by imageio-ffmpeg: pip install imageio imageio-ffmpeg."
            ) from None
        return metrics, load_video_metrics(args, metrics, device), None
    unknown = [m for m in metrics if m not in REWARD_METRICS + SET_METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}: use {', '.join(REWARD_METRICS + SET_METRICS)}.")
    if kind == "sdxl" and "dinov2" in metrics:
        raise ValueError("dinov2 scores class-conditional samples: use it with SiT, not SDXL.")
    if kind == "sit" and set(metrics) & {"hpsv2", "pickscore", "clip", "imagereward"}:
        raise ValueError("hpsv2, pickscore, clip and imagereward score prompts: use them with SDXL, not SiT.")
    if "fid" in metrics and args.fid_reference is None:
        raise ValueError("FID needs real images: give --fid_reference (a folder of images or a .npz with mu, sigma).")
    rewards = {}
    for name in metrics:
        if name == "imagereward":
            reward = imagereward_metric(args.metric_model.get(name), device)
            if reward is not None:
                rewards[name] = reward
        elif name in REWARD_METRICS:
            try:
                rewards[name] = load_reward(name, args.metric_model.get(name), device)
            except ValueError as error:  # the trainers' sentence, with this script's flag
                raise ValueError(
                    str(error).replace("--reward_model_name_or_path", f"--metric_model {name}=PATH")
                ) from None
    inception = None
    if set(metrics) & set(SET_METRICS):
        inception = load_inception(args.metric_model.get("inception"), device)
    return [m for m in metrics if m in rewards or m in SET_METRICS], rewards, inception


def load_video_metrics(args, metrics, device):
    """Video rewards ``(videos (B, F, 3, H, W), prompts) -> (B,)`` by name: ``frames:<image reward>`` (averaged over
    ``--reward_num_frames`` evenly spaced frames, as the Wan trainer scores) or ``module:function``."""
    rewards = {}
    for name in metrics:
        if not (name.startswith("frames:") or ":" in name):
            raise ValueError(
                f"{name!r} is not a video metric: use frames:hpsv2, frames:pickscore, frames:clip or module:function."
            )
        weights = args.metric_model.get(name.removeprefix("frames:"))
        try:
            rewards[name] = load_video_reward(name, weights, device, args.reward_num_frames)
        except ValueError as error:  # the trainers' sentence, with this script's flag
            flag = f"--metric_model {name.removeprefix('frames:')}=PATH"
            raise ValueError(str(error).replace("--reward_model_name_or_path", flag)) from None
    return rewards


def vbench_suite_prompts(dimensions):
    """The prompts of VBench's suite (``VBench_full_info.json`` in the vbench package) that test any of
    ``dimensions``, in the suite's order."""
    try:
        import vbench
    except Exception as error:
        raise ValueError(
            f"--vbench_suite reads VBench's prompt suite from the vbench package, which does not import here "
            f"({type(error).__name__}: {error})."
        ) from None
    with open(os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")) as f:
        return [entry["prompt_en"] for entry in json.load(f) if set(entry["dimension"]) & set(dimensions)]


def vbench_scores(args, folder, conditions, device):
    """``{"vbench:<dimension>": score}`` of the videos in ``folder`` for each ``--vbench_dimensions``, by VBench in its
    custom-prompt mode (each video with its prompt), a dimension at a time: one whose model weights VBench cannot
    download is skipped with one sentence. Nothing, with one sentence, where the vbench package does not import."""
    try:
        import vbench
        from vbench import VBench
    except Exception as error:  # vbench 0.1.5 pins transformers 4.33.2 (docs/evaluation.md)
        print(f"Skipping VBench: the vbench package does not import here ({type(error).__name__}: {error}).")
        return {}
    output, row = os.path.join(args.output_dir, "vbench"), os.path.basename(folder)
    if not args.vbench_suite:  # custom mode: every video in the folder with its prompt
        videos = sorted(name for name in os.listdir(folder) if re.fullmatch(r"\d{6}\.mp4", name))
        mode, prompts = "custom_input", {name: conditions[int(name[:6]) % len(conditions)] for name in videos}
    else:  # the standard mode finds video k of a prompt as "<prompt>-<k>.mp4": links to ours
        mode, suite_folder = "vbench_standard", os.path.join(output, row + "_suite")
        os.makedirs(suite_folder, exist_ok=True)
        for i in range(args.num_samples):
            link = os.path.join(suite_folder, f"{conditions[i]}-{i % VBENCH_VIDEOS_PER_PROMPT}.mp4")
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(sample_path(folder, i, ".mp4")), link)
        folder, prompts = suite_folder, []
    full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
    scores = {}
    for dimension in args.vbench_dimensions:
        name = f"{row}_{dimension}"
        try:
            VBench(device, full_info, output).evaluate(
                videos_path=folder, name=name, prompt_list=prompts, dimension_list=[dimension], mode=mode
            )
        except (subprocess.CalledProcessError, OSError) as error:  # weights come by wget or torch.hub at run time
            urls = [str(a) for a in getattr(error, "cmd", None) or [] if str(a).startswith("http")]
            source = urls[0] if urls else f"{type(error).__name__}: {error}"
            print(
                f"Skipping vbench:{dimension}: VBench could not download its weights ({source}): fetch them into "
                f"{os.environ.get('VBENCH_CACHE_DIR', '~/.cache/vbench')} (VBENCH_CACHE_DIR, as vbench/utils.py reads "
                "it) where there is network."
            )
            continue
        with open(os.path.join(output, f"{name}_eval_results.json")) as f:
            scores[f"vbench:{dimension}"] = float(json.load(f)[dimension][0])
    return scores


def imagereward_metric(path, device):
    try:
        import ImageReward
    except Exception as error:  # its imports break in several ways on current stacks (docs/evaluation.md)
        print(f"Skipping imagereward: the ImageReward package does not import here ({error}).")
        return None
    model = ImageReward.load(path or "ImageReward-v1.0", device=device)

    def reward(images, prompts):
        return torch.tensor([float(model.score(prompt, to_pil(image))) for prompt, image in zip(prompts, images)])

    return reward


def load_inception(weights_path, device):
    """torch-fidelity's port of the TensorFlow Inception-v3 that FID and IS were defined with."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise ValueError("FID and IS need torch-fidelity: pip install torch-fidelity.") from None
    try:
        network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], weights_path)
    except Exception as error:
        raise ValueError(
            f"cannot load the Inception weights ({error}): download torch-fidelity's "
            "weights-inception-2015-12-05-6726825d.pth and give it with --metric_model inception=PATH."
        ) from None
    return network.to(device)


def inception_features(network, paths, resolution, device):
    """Pool features (B, 2048) and logits (B, 1008) of image files (grayscale as RGB), centre-cropped and
    resized to ``resolution`` first."""
    images = [np.array(_center_crop_resize(Image.open(path).convert("RGB"), resolution)) for path in paths]
    with torch.no_grad():
        features, logits = network(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(device))
    return features.double().cpu(), logits.double().cpu()


def _center_crop_resize(image, size):
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def reference_statistics(args, network, device):
    """mu and sigma of the real images: from a .npz (mu, sigma), or computed from a folder and cached."""
    if os.path.isfile(args.fid_reference):
        with np.load(args.fid_reference) as stats:
            if "mu" not in stats or "sigma" not in stats:
                raise ValueError(f"{args.fid_reference!r} holds no 'mu' and 'sigma' arrays.")
            return stats["mu"], stats["sigma"]
    cache = os.path.join(args.output_dir, "fid_reference_stats.npz")
    if os.path.exists(cache):
        with np.load(cache) as stats:
            if (
                str(stats["source"]) == os.path.abspath(args.fid_reference)
                and int(stats["size"]) == args.fid_resolution
            ):
                return stats["mu"], stats["sigma"]
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(args.fid_reference)
        for name in names
        if name.lower().endswith(IMAGE_TYPES)
    )
    if len(paths) < 2:
        raise ValueError(
            f"--fid_reference {args.fid_reference!r} holds fewer than 2 images ({', '.join(IMAGE_TYPES)})."
        )
    features = []
    for start in tqdm(range(0, len(paths), args.batch_size), desc="reference images"):
        features.append(
            inception_features(network, paths[start : start + args.batch_size], args.fid_resolution, device)[0]
        )
    mu, sigma = (x.numpy() for x in feature_statistics(torch.cat(features)))
    os.makedirs(args.output_dir, exist_ok=True)
    np.savez(cache, mu=mu, sigma=sigma, source=os.path.abspath(args.fid_reference), size=args.fid_resolution)
    return mu, sigma


def score_row(args, folder, conditions, metrics, rewards, inception, reference, device, suffix=".png"):
    """Every metric of one row's samples (images, or videos for ``suffix`` ".mp4"), read back from disk in
    batches."""
    values = {name: [] for name in rewards}
    features, logits = [], []
    load = load_images if suffix == ".png" else load_videos
    for start in range(0, args.num_samples, args.batch_size):
        index = range(start, min(start + args.batch_size, args.num_samples))
        paths = [sample_path(folder, i, suffix) for i in index]
        if rewards:
            images, batch_conditions = load(paths).to(device), [conditions[i % len(conditions)] for i in index]
            for name, reward in rewards.items():
                values[name].append(reward(images, batch_conditions).float().cpu())
        if inception is not None:
            batch_features, batch_logits = inception_features(inception, paths, args.fid_resolution, device)
            features.append(batch_features)
            logits.append(batch_logits)
    row = {name: torch.cat(v).mean().item() for name, v in values.items()}
    if "fid" in metrics:
        row["fid"] = frechet_distance(*feature_statistics(torch.cat(features)), *reference)
    if "is" in metrics:
        row["is"], row["is_std"] = inception_score(torch.cat(logits), splits=min(10, args.num_samples))
    return row


# ----------------------------------------------------------------------------- outputs


def markdown_table(rows, metrics):
    header = "| model | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics)
    lines = [header]
    for row in rows:
        cells = [f"{row[m]:.4f}" + (f" ± {row['is_std']:.4f}" if m == "is" else "") for m in metrics]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_settings(args, settings):
    """The sampling settings, after checking that the samples on disk (if any) were made with them."""
    path = os.path.join(args.output_dir, "settings.json")
    sampling = {key: settings[key] for key in SAMPLING_SETTINGS}
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        changed = [key for key in SAMPLING_SETTINGS if previous.get(key) != sampling[key]]
        if changed:
            raise ValueError(
                f"{args.output_dir!r} holds samples made with other {', '.join(changed)}: give another --output_dir."
            )
    return sampling


def main(argv=None):
    args = parse_args(argv)
    try:
        kind = model_kind(args.pretrained_model_name_or_path)
        if args.teacher_guidance_scale is None:
            args.teacher_guidance_scale = TEACHER_GUIDANCE[kind]
        for path in args.students.values():  # every student loads before any sample is made
            if kind == "sdxl":
                card_setting(path, "student_timesteps", "train_amd_sdxl.py")
            elif kind == "wan":
                card_setting(path, "num_student_steps", "train_amd_wan.py")
                block = card_settings(path, "train_amd_wan.py").get("num_frame_per_block")
                if block and ((args.num_frames - 1) // 4 + 1) % block:
                    raise ValueError(
                        f"the streaming student {path!r} makes blocks of {block} latent frames: give --num_frames "
                        f"4 * ({block} * n) - 3, not {args.num_frames}."
                    )
            elif model_kind(path) != "sit":
                raise ValueError(f"the student {path!r} is not a SiT pipeline folder.")
        conditions = conditions_for(args, kind)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        metrics, rewards, inception = load_metrics(args, kind, device)
        digest = hashlib.sha256(json.dumps(conditions).encode()).hexdigest()
        settings = {**vars(args), "kind": kind, "metrics": metrics, "conditions_sha256": digest}
        sampling = check_settings(args, settings)
        reference = reference_statistics(args, inception, device) if "fid" in metrics else None
    except (ValueError, OSError) as error:
        raise SystemExit(f"evaluate.py: {error}") from None
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "settings.json"), "w") as f:
        json.dump(sampling, f, indent=2)
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]

    rows, grid = [], []
    suffix = ".mp4" if kind == "wan" else ".png"
    for name, folder_name, sample in {"sdxl": sdxl_rows, "sit": sit_rows, "wan": wan_rows}[kind](args, device, dtype):
        folder = os.path.join(args.output_dir, "samples", folder_name)
        sample_row(args, sample, folder, conditions, device, suffix)
        score = score_row(args, folder, conditions, metrics, rewards, inception, reference, device, suffix)
        if args.vbench_dimensions:
            score.update(vbench_scores(args, folder, conditions, device))
        rows.append({"model": name, **score})
        shown = [sample_path(folder, i, suffix) for i in range(min(args.grid_samples, args.num_samples))]
        shown = load_images(shown) if kind != "wan" else load_videos(shown)  # (n, [F,] C, H, W)
        grid.append(torch.nn.functional.interpolate(shown.flatten(0, -4), size=min(256, shown.shape[-1]), mode="area")
                    .unflatten(0, shown.shape[:-3]))  # fmt: skip

    metrics += [key for key in rows[0] if key.startswith("vbench:") and all(key in row for row in rows)]
    table = markdown_table(rows, metrics)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"settings": settings, "rows": rows}, f, indent=2)
    columns, grid = len(grid[0]), torch.cat(grid)
    written = "grid.png"
    if kind == "wan":  # the middle frames in grid.png, the whole videos in grid.gif
        frames = [image_grid(grid[:, f], columns=columns) for f in range(grid.shape[1])]
        frames[0].save(os.path.join(args.output_dir, "grid.gif"), save_all=True, append_images=frames[1:],
                       duration=1000 // VIDEO_FPS, loop=0)  # fmt: skip
        grid, written = grid[:, grid.shape[1] // 2], "grid.png and grid.gif"
    image_grid(grid, columns=columns).save(os.path.join(args.output_dir, "grid.png"))
    print(table)
    print(f"\nWrote {args.output_dir}/results.md, results.json and {written}.")


if __name__ == "__main__":
    main()
