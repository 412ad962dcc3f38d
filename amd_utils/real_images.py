"""Real images for DMD2's GAN term: the flags that give them, their loading and preprocessing, VAE encoding, and an
on-disk latent cache.

Images come as diffusers' text-to-image examples take them: ``--train_data_dir`` (``datasets``' imagefolder: a
folder with a ``metadata.jsonl`` or ``.csv`` of captions, or an ImageNet-style tree of class folders, whose labels
are the sorted folder names' indices) or ``--dataset_name``. Each is resized (short side) and centre-cropped to the
model's resolution as those examples do, then encoded by the VAE: one image at a time, its posterior sample drawn
with its own index as the seed, and kept in float16. So an image's latent is the same at every step, and the cache
(``--latents_cache_dir``, which DMD2 has as a latent LMDB) changes nothing but the time it takes.
"""

import json
import math
import os

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

CACHE_SHARD_SIZE = 1024  # images per safetensors file of the cache


def add_gan_arguments(parser, condition):
    """The GAN flags; ``condition`` is "caption" (text-to-image trainers) or "label" (class-conditional)."""
    group = parser.add_argument_group("GAN term on real images (DMD2)")
    group.add_argument(
        "--gan_loss_weight",
        type=float,
        default=0.0,
        help="Weight of the generator's GAN term softplus(-D(G(z))) (DMD2's SDXL recipe: 5e-3); 0: no GAN.",
    )
    group.add_argument(
        "--fake_gan_loss_weight",
        type=float,
        default=0.0,
        help="Weight of the discriminator loss in the fake teacher's loss (DMD2: 1e-2); the head trains with the fake.",
    )
    group.add_argument(
        "--train_data_dir",
        default=None,
        help=(
            "Real images: a folder with a metadata.jsonl or .csv holding a --caption_column (datasets' imagefolder)."
            if condition == "caption"
            else "Real images: an ImageNet-style tree of class folders (labels: the sorted folder names' indices)."
        ),
    )
    if condition == "label":  # the text-to-image trainers have --dataset_name among their prompt flags
        group.add_argument("--dataset_name", default=None, help="Real images: a datasets dataset with a label column.")
        group.add_argument("--dataset_split", default="train")
    group.add_argument("--image_column", default="image")
    if condition == "caption":
        group.add_argument(
            "--caption_column",
            default="text",
            help="The real images' captions: the training prompts when no --prompts_file is given (GAN on or off).",
        )
    else:
        group.add_argument("--label_column", default="label")
    group.add_argument(
        "--latents_cache_dir",
        default=None,
        help="Encode every real image once into this folder (resumable; reused by later runs on the same data).",
    )


def gan_enabled(args):
    """Whether a run has the GAN term (the Wan trainer has no GAN flags: never)."""
    return getattr(args, "gan_loss_weight", 0) > 0 or getattr(args, "fake_gan_loss_weight", 0) > 0


def check_gan_args(parser, args):
    """Argparse's one-sentence errors for the GAN flags."""
    for name in ("gan_loss_weight", "fake_gan_loss_weight"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0 (0: no GAN term), got {getattr(args, name)}.")
    if args.train_data_dir is not None and not os.path.isdir(args.train_data_dir):
        parser.error(f"--train_data_dir {args.train_data_dir!r} is not a folder.")
    if not gan_enabled(args):
        if args.latents_cache_dir is not None:
            parser.error("--latents_cache_dir caches the GAN's real images: it needs --gan_loss_weight or "
                         "--fake_gan_loss_weight above 0.")  # fmt: skip
        return
    if args.train_data_dir is None and args.dataset_name is None:
        parser.error(
            "--gan_loss_weight and --fake_gan_loss_weight need real images: give --train_data_dir (a folder of "
            "images) or --dataset_name."
        )
    if args.train_data_dir is not None and args.dataset_name is not None:
        parser.error("give the real images with one of --train_data_dir or --dataset_name, not both.")


def resize_and_center_crop(image, resolution):
    """``image`` (PIL) with its short side resized to ``resolution`` (bilinear; the long side truncated to an
    integer) and the centre ``resolution`` x ``resolution`` cut out: torchvision's ``Resize(resolution,
    InterpolationMode.BILINEAR)`` then ``CenterCrop(resolution)`` on a PIL image, as diffusers' text-to-image
    examples preprocess (torchvision 0.29 ``_compute_resized_output_size``, ``center_crop``)."""
    width, height = image.size
    if min(width, height) != resolution:
        long = int(resolution * max(width, height) / min(width, height))
        image = image.resize((resolution, long) if width <= height else (long, resolution), Image.BILINEAR)
    left = int(round((image.width - resolution) / 2.0))
    top = int(round((image.height - resolution) / 2.0))
    return image.crop((left, top, left + resolution, top + resolution))


class RealImages:
    """The real images with their captions or labels (``conditions``); :meth:`batch` gives them as the network's
    inputs: VAE latents (scaled by the VAE's ``scaling_factor``), or pixels in [-1, 1] for a pixel-space model
    (``vae`` None, ``channels`` 1 or 3)."""

    def __init__(self, args, condition, resolution, channels, vae, accelerator, num_classes=None):
        self.resolution, self.vae, self.device = resolution, vae, accelerator.device
        self.mode = "L" if (vae.config.in_channels if vae is not None else channels) == 1 else "RGB"
        self.images = load_image_dataset(args, condition)
        self.image_column = args.image_column
        condition_column = getattr(args, f"{condition}_column")
        self.conditions = self.images[condition_column]
        if condition == "label":
            bad = [label for label in self.conditions if not isinstance(label, int) or not 0 <= label < num_classes]
            if bad:
                raise ValueError(
                    f"the real images' {condition_column!r} column holds {bad[0]!r}, not a class of this model "
                    f"(0 to {num_classes - 1}): give one class folder or label per model class."
                )
        else:
            self.conditions = [caption if isinstance(caption, str) else "" for caption in self.conditions]
        self.cache = args.latents_cache_dir
        if self.cache is not None:
            source = os.path.abspath(args.train_data_dir) if args.train_data_dir else args.dataset_name
            encoder = args.pretrained_vae_model_name_or_path or args.pretrained_model_name_or_path
            self.fill_cache(accelerator, {
                "source": source, "split": None if args.train_data_dir else args.dataset_split,
                "images": len(self.images), "resolution": resolution, "mode": self.mode,
                "encoder": encoder if vae is not None else "pixels",
            })  # fmt: skip

    def __len__(self):
        return len(self.images)

    @torch.no_grad()
    def encode(self, indices):
        """Images ``indices`` of the dataset as float16 network inputs on the CPU."""
        encoded = []
        for index in indices:
            pixels = resize_and_center_crop(self.images[index][self.image_column].convert(self.mode), self.resolution)
            pixels = torch.from_numpy(np.asarray(pixels, dtype=np.float32) / 127.5 - 1.0)
            pixels = (pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1))[None]
            if self.vae is not None:
                posterior = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
                pixels = posterior.sample(torch.Generator().manual_seed(index)) * self.vae.config.scaling_factor
            encoded.append(pixels.to("cpu", torch.float16))
        return torch.cat(encoded)

    def fill_cache(self, accelerator, info):
        """Encode the images into ``CACHE_SHARD_SIZE``-image safetensors files, each written whole or not at all;
        files already there are kept (a resumed fill, or a later run). Every process encodes its share."""
        info_path = os.path.join(self.cache, "cache_info.json")
        if os.path.isfile(info_path):
            with open(info_path) as f:
                found = json.load(f)
            if found != info:
                changed = sorted(key for key in info if found.get(key) != info[key])
                raise ValueError(
                    f"the latent cache {self.cache!r} holds other images or encodings (its {', '.join(changed)} "
                    "differ): give another --latents_cache_dir, or delete it."
                )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            os.makedirs(self.cache, exist_ok=True)
            with open(info_path, "w") as f:
                json.dump(info, f, indent=2)
        accelerator.wait_for_everyone()
        shards = range(math.ceil(len(self) / CACHE_SHARD_SIZE))[accelerator.process_index :: accelerator.num_processes]
        for shard in tqdm(shards, desc="caching latents", disable=not accelerator.is_local_main_process):
            path = self.shard_path(shard)
            if not os.path.isfile(path):
                start = shard * CACHE_SHARD_SIZE
                latents = self.encode(range(start, min(start + CACHE_SHARD_SIZE, len(self))))
                save_file({"latents": latents}, path + ".tmp")
                os.replace(path + ".tmp", path)
        accelerator.wait_for_everyone()

    def shard_path(self, shard):
        return os.path.join(self.cache, f"latents-{shard:05d}.safetensors")

    def batch(self, indices):
        """``(inputs, conditions)`` of images ``indices``: float32 inputs on the device, and the captions or labels."""
        if self.cache is None:
            inputs = self.encode(indices)
        else:
            rows = []
            for index in indices:
                shard, row = divmod(index, CACHE_SHARD_SIZE)
                with safe_open(self.shard_path(shard), "pt") as f:
                    rows.append(f.get_slice("latents")[row : row + 1])
            inputs = torch.cat(rows)
        return inputs.to(self.device, torch.float32), [self.conditions[i] for i in indices]


def load_image_dataset(args, condition):
    """The ``datasets`` dataset of --train_data_dir or --dataset_name, with its --image_column and its
    --caption_column or --label_column (``condition``: "caption" or "label") checked; an error sentence otherwise."""
    from datasets import load_dataset
    from datasets.data_files import EmptyDatasetError

    if args.train_data_dir is not None:
        source = f"--train_data_dir {args.train_data_dir!r}"
        try:
            images = load_dataset("imagefolder", data_dir=args.train_data_dir, split="train")
        except EmptyDatasetError:
            images = []
    else:
        source = f"the dataset {args.dataset_name!r}"
        try:
            images = load_dataset(args.dataset_name, split=args.dataset_split)
        except Exception as error:  # datasets raises many types for a missing dataset or split
            raise ValueError(f"cannot load {source} ({error}).") from None
    if len(images) == 0:
        raise ValueError(f"{source} holds no images: give a folder of image files (PNG, JPEG, ...).")
    for flag in ("--image_column", f"--{condition}_column"):
        column = getattr(args, flag[2:])
        if column not in images.column_names:
            folder_hint = {"caption": "a metadata.jsonl or .csv with file_name and caption columns",
                           "label": "one folder per class"}[condition]  # fmt: skip
            hint = f", or give the folder {folder_hint}" if args.train_data_dir and flag != "--image_column" else ""
            raise ValueError(
                f"{source} has no column {column!r} (it has {', '.join(images.column_names)}): name one with "
                f"{flag}{hint}."
            )
    return images
