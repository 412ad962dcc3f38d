"""Validation images: a grid PNG on disk and the same grid in the trackers."""

import math
import os

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor, columns: int = 8, min_size: int = 64, padding: int = 2) -> Image.Image:
    """Tile images in [0, 1] of shape (B, C, H, W) into one RGB image, ``padding`` grey pixels apart; tiny
    images (8x8 digits) are enlarged with nearest-neighbour to at least ``min_size`` pixels so they stay readable."""
    images = images.detach().float().clamp(0, 1).cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    scale = max(1, math.ceil(min_size / images.shape[-1]))
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    batch, _, height, width = images.shape
    columns = min(columns, batch)
    rows = math.ceil(batch / columns)
    step_y, step_x = height + padding, width + padding
    grid = torch.full((3, rows * step_y - padding, columns * step_x - padding), 0.5)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        grid[:, row * step_y : row * step_y + height, column * step_x : column * step_x + width] = image
    return Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def save_and_log_grid(accelerator, images, output_dir, step, columns=8):
    """Write ``<output_dir>/validation/step-<step>.png`` and send it to tensorboard / wandb; returns the path.
    Only the main process writes (the others return None)."""
    if not accelerator.is_main_process:
        return None
    grid = image_grid(images, columns)
    folder = os.path.join(output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step-{step}.png")
    grid.save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": wandb.Image(grid)}, step=step)
    return path


def save_and_log_video_grid(accelerator, videos, output_dir, step, columns=4, fps=16):
    """Tile videos in [0, 1] of shape (B, F, C, H, W) frame by frame and write the animation to
    ``<output_dir>/validation/step-<step>.gif``; the trackers get the middle frame's grid (tensorboard) or
    the GIF (wandb). Returns the path; only the main process writes (the others return None)."""
    if not accelerator.is_main_process:
        return None
    frames = [image_grid(videos[:, f], columns) for f in range(videos.shape[1])]
    folder = os.path.join(output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step-{step}.gif")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(frames[len(frames) // 2]), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": wandb.Video(path)}, step=step)
    return path
