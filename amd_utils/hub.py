"""Model cards and Hub uploads for the trainers' output folders."""

import os

from huggingface_hub import create_repo, upload_folder

from .real_images import gan_enabled


def amd_settings(args):
    """The settings every trainer's model card lists: the AMD objective's and the run's size."""
    names = ("operator", "sensitivity", "sharpen", "group_size", "real_guidance_scale", "reward", "max_train_steps")
    names += ("train_batch_size", "learning_rate", "lora_rank")
    if gan_enabled(args):
        names += ("gan_loss_weight", "fake_gan_loss_weight")
    return {name: getattr(args, name) for name in names}


def write_model_card(output_dir, *, base_model, title, description, usage, settings, images=(), tags=()):
    """Write ``README.md`` with Hub metadata, the AMD settings of the run, a usage snippet and sample images
    (paths relative to ``output_dir``)."""
    front = ["---", f"base_model: {base_model}", "library_name: diffusers", "tags:"]
    front += [f"- {tag}" for tag in ("diffusers", "amd", "distribution-matching-distillation", *tags)]
    front.append("---")
    rows = ["| setting | value |", "|---|---|"] + [f"| `{k}` | `{v}` |" for k, v in settings.items()]
    body = [
        f"# {title}",
        "",
        description,
        "",
        "## Usage",
        "",
        "```python",
        usage.strip(),
        "```",
        "",
        "## Training settings",
        "",
        *rows,
        "",
        "Trained with Adaptive Matching Distillation (Bai et al., arXiv 2602.07345).",
    ]
    if images:
        body += ["", "## Samples", ""] + [f"![sample]({path})" for path in images]
    with open(os.path.join(output_dir, "README.md"), "w") as f:
        f.write("\n".join(front + body) + "\n")


def push_to_hub(output_dir, repo_id, token=None):
    """Upload the output folder (without training checkpoints and logs) to ``repo_id``."""
    repo_id = create_repo(repo_id, exist_ok=True, token=token).repo_id
    upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        token=token,
        commit_message="Upload AMD-distilled weights",
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "logs/**"],
    )
    return repo_id
