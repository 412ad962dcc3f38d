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

Rows: the teacher at ``--teacher_steps`` with CFG ``--teacher_guidance_scale``, then every ``--student``, each
sampled as its model card says (SDXL LoRA: LCMScheduler at the card's ``student_timesteps``, no guidance; SiT
folder: its own scheduler and noise levels). Sample i of every row uses prompt (or class) i and seed
``--seed + i``. Samples are written to ``<output_dir>/samples/<row>/`` as they are made; a rerun skips those on
disk. Writes ``results.md`` (a row per model, a column per metric), ``results.json`` (the same and the
settings) and ``grid.png`` (a row per model, the same prompt and seed per column).
"""

import argparse
import ast
import functools
import hashlib
import json
import os
import re
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
from amd_utils.rewards import load_reward  # noqa: E402

REWARD_METRICS = ("hpsv2", "pickscore", "clip", "dinov2", "imagereward")
SET_METRICS = ("fid", "is")  # computed from Inception features of the whole set
DEFAULT_METRICS = {"sdxl": ["hpsv2", "pickscore", "imagereward"], "sit": ["fid", "is"]}
# The teacher row's defaults: the CFG each trainer distils towards (its --real_guidance_scale default).
TEACHER_GUIDANCE = {"sdxl": 8.0, "sit": 1.5}
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp")
# The trainers' LoRA file, named to load_lora_weights: diffusers 0.34 to 0.39 refuse a local folder offline without it.
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
# Settings that change the samples: a rerun with other values must not reuse the samples on disk.
# Sample i depends on these and on i alone, so a rerun with a larger --num_samples adds samples.
SAMPLING_SETTINGS = ("pretrained_model_name_or_path", "students", "teacher_steps", "teacher_guidance_scale",
                     "resolution", "seed", "mixed_precision", "conditions_sha256")  # fmt: skip


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
    parser.add_argument("--metrics", nargs="+", default=None, choices=REWARD_METRICS + SET_METRICS,
                        help="Default: hpsv2 pickscore imagereward for SDXL, fid is for SiT.")  # fmt: skip
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

    for name in ("teacher_steps", "num_samples", "batch_size", "resolution", "fid_resolution"):
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
    """``sdxl`` or ``sit``, from the pipeline class named in ``model_index.json``."""
    from diffusers import DiffusionPipeline

    class_name = DiffusionPipeline.load_config(path)["_class_name"]
    if class_name == "StableDiffusionXLPipeline":
        return "sdxl"
    if class_name == "SiTPipeline" or (isinstance(class_name, list) and "SiTPipeline" in class_name):
        return "sit"
    raise ValueError(f"{path!r} holds a {class_name}: this script evaluates SDXL and SiT pipelines.")


def student_timesteps(path):
    """The SDXL student's timesteps, from the settings table of the model card train_amd_sdxl.py writes."""
    card = os.path.join(path, "README.md")
    if not os.path.isdir(path):
        from huggingface_hub import hf_hub_download

        try:
            card = hf_hub_download(path, "README.md")
        except Exception as error:  # offline, missing repository or file: one sentence either way
            raise ValueError(f"cannot fetch the model card of the student {path!r} ({type(error).__name__}).") from None
    if not os.path.isfile(card):
        raise ValueError(f"{path!r} holds no model card (README.md): is it a train_amd_sdxl.py output?")
    match = re.search(r"\| `student_timesteps` \| `(\[[\d, ]+\])` \|", open(card, encoding="utf-8").read())
    if match is None:
        raise ValueError(f"the model card of {path!r} states no student_timesteps: is it a train_amd_sdxl.py output?")
    return ast.literal_eval(match.group(1))


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
        timesteps = student_timesteps(path)
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


def _folder_name(name):
    return "student_" + re.sub(r"[^\w.-]+", "_", name)


def conditions_for(args, kind):
    """The prompts (SDXL) or classes (SiT) that sample i takes the i-th of, cycled."""
    if kind == "sdxl":
        if (args.prompts_file is None) == (args.dataset_name is None):
            raise ValueError("SDXL samples need prompts: give exactly one of --prompts_file or --dataset_name.")
        prompts = load_prompts(args)
    else:
        if args.prompts_file or args.dataset_name:
            raise ValueError("SiT is class-conditional: give --class_labels instead of prompts.")
        from diffusers import DiTTransformer2DModel

        config = DiTTransformer2DModel.load_config(args.pretrained_model_name_or_path, subfolder="transformer")
        prompts = args.class_labels or list(range(config["num_embeds_ada_norm"]))
    return prompts


# ----------------------------------------------------------------------------- sampling


def sample_row(args, sample, folder, conditions, device):
    """Make the samples of one row that are not on disk yet, ``--batch_size`` at a time."""
    os.makedirs(folder, exist_ok=True)
    missing = [i for i in range(args.num_samples) if not os.path.exists(sample_path(folder, i))]
    bar = tqdm(total=args.num_samples, initial=args.num_samples - len(missing), desc=os.path.basename(folder))
    for start in range(0, len(missing), args.batch_size):
        index = missing[start : start + args.batch_size]
        generators = [torch.Generator(device).manual_seed(args.seed + i) for i in index]
        images = sample([conditions[i % len(conditions)] for i in index], generators)
        for i, image in zip(index, images):
            partial = sample_path(folder, i).removesuffix(".png") + ".partial.png"  # complete files only on disk
            to_pil(image).save(partial)
            os.replace(partial, sample_path(folder, i))
        bar.update(len(index))
    bar.close()


def sample_path(folder, i):
    return os.path.join(folder, f"{i:06d}.png")


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


def imagereward_metric(path, device):
    try:
        import ImageReward
    except Exception as error:  # its imports break in several ways on current stacks (README)
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


def score_row(args, folder, conditions, metrics, rewards, inception, reference, device):
    """Every metric of one row's samples, read back from disk in batches."""
    values = {name: [] for name in rewards}
    features, logits = [], []
    for start in range(0, args.num_samples, args.batch_size):
        index = range(start, min(start + args.batch_size, args.num_samples))
        paths = [sample_path(folder, i) for i in index]
        if rewards:
            images, batch_conditions = load_images(paths).to(device), [conditions[i % len(conditions)] for i in index]
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
                student_timesteps(path)
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
    for name, folder_name, sample in (sdxl_rows if kind == "sdxl" else sit_rows)(args, device, dtype):
        folder = os.path.join(args.output_dir, "samples", folder_name)
        sample_row(args, sample, folder, conditions, device)
        rows.append(
            {"model": name, **score_row(args, folder, conditions, metrics, rewards, inception, reference, device)}
        )
        shown = load_images([sample_path(folder, i) for i in range(min(args.grid_samples, args.num_samples))])
        grid.append(torch.nn.functional.interpolate(shown, size=min(256, shown.shape[-1]), mode="area"))

    table = markdown_table(rows, metrics)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"settings": settings, "rows": rows}, f, indent=2)
    image_grid(torch.cat(grid), columns=len(grid[0])).save(os.path.join(args.output_dir, "grid.png"))
    print(table)
    print(f"\nWrote {args.output_dir}/results.md, results.json and grid.png.")


if __name__ == "__main__":
    main()
