"""Training prompts: the flags that give them (a file or a datasets dataset) and their loading."""

import csv
import json
import os

from .real_images import gan_enabled, load_image_dataset

PROMPT_FILE_TYPES = (".txt", ".csv", ".jsonl")


def add_prompt_arguments(group):
    group.add_argument(
        "--prompts_file",
        default=None,
        help="A .txt file (one prompt a line), or a .csv / .jsonl with a --prompt_column.",
    )
    group.add_argument(
        "--dataset_name", default=None, help="A datasets dataset with a --prompt_column, instead of --prompts_file."
    )
    group.add_argument("--dataset_split", default="train")
    group.add_argument("--prompt_column", default="prompt")


def check_prompt_args(parser, args):
    """Exactly one source of prompts. SDXL's real images (``amd_utils.real_images``) are one: their captions are the
    prompts when neither a --prompts_file nor a --dataset_name is given (with the GAN term on, --dataset_name gives
    those images and their captions)."""
    if gan_enabled(args):
        return
    given = [args.prompts_file, args.dataset_name]
    if all(given) or not any([*given, getattr(args, "train_data_dir", None)]):
        sdxl = hasattr(args, "train_data_dir")
        captions = ", or --train_data_dir, whose images' captions are then the prompts" if sdxl else ""
        parser.error(f"give the prompts with exactly one of --prompts_file or --dataset_name{captions}.")


def load_prompts(args):
    """The training prompts, from --prompts_file, --dataset_name or the captions of --train_data_dir's images; an
    error sentence when there are none."""
    if args.prompts_file is None and args.dataset_name is None:  # SDXL's --train_data_dir (check_prompt_args)
        prompts, source = load_image_dataset(args, "caption")[args.caption_column], args.train_data_dir
    elif args.prompts_file is None:
        from datasets import load_dataset

        try:
            prompts = load_dataset(args.dataset_name, split=args.dataset_split)[args.prompt_column]
        except Exception as error:  # datasets raises many types for a missing dataset, split or column
            raise ValueError(
                f"cannot read the column {args.prompt_column!r} of the dataset {args.dataset_name!r} ({error})."
            ) from None
        source = args.dataset_name
    else:
        path, extension = args.prompts_file, os.path.splitext(args.prompts_file)[1].lower()
        if extension not in PROMPT_FILE_TYPES:
            raise ValueError(f"--prompts_file must be one of {', '.join(PROMPT_FILE_TYPES)}, got {path!r}.")
        if not os.path.isfile(path):
            raise ValueError(f"the prompts file {path!r} does not exist.")
        with open(path, newline="", encoding="utf-8") as f:
            if extension == ".txt":
                prompts = f.read().splitlines()
            elif extension == ".csv":
                prompts = [row.get(args.prompt_column) for row in csv.DictReader(f)]
            else:
                prompts = [json.loads(line).get(args.prompt_column) for line in f if line.strip()]
        source = path
    prompts = [p.strip() for p in prompts if isinstance(p, str) and p.strip()]
    if not prompts:
        raise ValueError(f"{source!r} holds no prompts: give one prompt per line (or a {args.prompt_column!r} column).")
    return prompts
