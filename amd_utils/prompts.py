"""Training prompts: the flags that give them (a file or a datasets dataset) and their loading."""

import csv
import json
import os

from .real_images import gan_enabled

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
    """Exactly one source of prompts; with the GAN term on (``amd_utils.real_images``), --dataset_name gives the real
    images, whose captions are the prompts unless a --prompts_file is given."""
    if gan_enabled(args):
        return
    if (args.prompts_file is None) == (args.dataset_name is None):
        parser.error("give the prompts with exactly one of --prompts_file or --dataset_name.")


def load_prompts(args):
    """The training prompts, from --prompts_file or --dataset_name; an error sentence when there are none."""
    if args.prompts_file is None:
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
