"""Everything the digits demo needs, trained on CPU from scikit-learn's 8x8 digits (no download).

- ``teacher/``: a class-conditional pixel-space DiT trained with SiT's flow matching (t = 1 clean), with
  10% null-class dropout for classifier-free guidance, saved as the SiT pipeline folder that
  ``train_amd_sit.py`` reads;
- ``reward/``: a small ``Dinov2ForImageClassification`` (stand-in for the paper's DINOv2 ImageNet
  classifier) trained on half the images, loaded by the trainer's ``--reward dinov2``;
- ``judge.safetensors``: a small CNN trained on the other half, used only for evaluation (class accuracy
  and Frechet distance features), so the metrics never reuse the reward model;
- ``real_digits/``: the reward's half as PNGs in class folders, the real images of the GAN term (``gan_study.py``),
  apart from the judge's half that FD compares with.

    python -m examples.digits.prepare --output_dir outputs/digits
"""

import argparse
import glob
import os
import shutil
import tempfile
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from tqdm.auto import tqdm
from transformers import BitImageProcessor, Dinov2Config, Dinov2ForImageClassification

from amd_utils.parameterization import sit_add_noise, sit_model_target
from amd_utils.pipeline_sit import use_sit_time_embedding
from amd_utils.sit import save_sit_pipeline
from examples.reproducible import pin_cpu_arithmetic

NUM_CLASSES = 10
# Every digits model trains and samples on this many threads, whatever the machine has: reductions split across
# threads sum in another order, and 1 and 2 threads gave the reward and the judge other weights.
THREADS = 2


def redraw(weights, seed, embedding_tables=()):
    """A state dict's weights drawn afresh, each from a generator seeded with ``seed`` and its name, so that the draws
    depend neither on the order in which a library builds its modules nor on how many draws it makes (transformers
    4.48 and 5 give the same Dinov2 config other initial weights). The distributions are PyTorch's for a new layer:
    N(0, 1) for the ``embedding_tables``, uniform in +-1/sqrt(fan_in) for other matrices and kernels and for their
    biases. A weight the library set to one constant (norm and layer scales, zeros) keeps it."""
    drawn = {}
    for name, weight in weights.items():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        matrix = weights.get(name[: -len("bias")] + "weight") if name.endswith("bias") else weight  # its fan-in
        bound = (matrix.numel() / matrix.shape[0]) ** -0.5 if matrix is not None and matrix.dim() > 1 else None
        if weight.numel() == 0 or bool((weight == weight.flatten()[0]).all()) or bound is None:
            drawn[name] = weight
        elif name in embedding_tables:
            drawn[name] = torch.randn(weight.shape, generator=generator).to(weight.dtype)
        else:
            drawn[name] = (torch.rand(weight.shape, generator=generator) * 2 - 1).mul_(bound).to(weight.dtype)
    return drawn


def with_redrawn_weights(model, seed):
    """A diffusers or transformers ``model`` reloaded with :func:`redraw`'s weights. The names are those of the saved
    file, which stay when a library renames its modules (transformers 5 renamed Dinov2's attention projections and
    saves them under the old names). None of the digits models has buffers: every saved tensor is a weight."""
    tables = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Embedding)}
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        (path,) = glob.glob(os.path.join(folder, "*.safetensors"))
        save_file(redraw(load_file(path), seed, tables), path, metadata={"format": "pt"})
        return type(model).from_pretrained(folder)


def load_data():
    """The 1797 digits as (N, 1, 8, 8) pixels in [-1, 1], their labels, and a split into two halves
    balanced per class: ``half == 0`` trains the reward, ``half == 1`` the judge."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    labels = torch.tensor(digits.target)
    half = torch.zeros_like(labels)
    for c in range(NUM_CLASSES):
        members = torch.nonzero(labels == c).flatten()
        half[members[torch.randperm(len(members), generator=torch.Generator().manual_seed(c))[::2]]] = 1
    return images, labels, half


# ----------------------------------------------------------------------------- teacher


def train_teacher(images, labels, output_dir, steps, batch_size=128, seed=0):
    """Flow matching in SiT's convention: x_t = t x0 + (1 - t) noise, target velocity x0 - noise."""
    transformer = DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=32, in_channels=1, out_channels=1, num_layers=4,
        sample_size=8, patch_size=2, num_embeds_ada_norm=NUM_CLASSES, norm_eps=1e-6,
    )  # fmt: skip
    transformer = with_redrawn_weights(transformer, seed)
    use_sit_time_embedding(transformer).eval()  # eval: we drop labels ourselves, the same way in every block
    torch.manual_seed(seed)  # after building: the draws below do not depend on what building drew
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    for _ in tqdm(range(steps), desc="teacher"):
        index = torch.randint(0, len(images), (batch_size,))
        x0, y = images[index], labels[index].clone()
        y[torch.rand(batch_size) < 0.1] = NUM_CLASSES  # the null class, for classifier-free guidance
        noise, t = torch.randn_like(x0), torch.rand(batch_size)
        velocity = transformer(sit_add_noise(x0, noise, t), timestep=t, class_labels=y).sample
        loss = F.mse_loss(velocity, sit_model_target(x0, noise))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    save_sit_pipeline(output_dir, transformer, FlowMatchEulerDiscreteScheduler())


# ----------------------------------------------------------------------------- reward and judge


def to_unit(images):
    return (images + 1) / 2


def train_classifier(model, forward, images, labels, steps, batch_size=128, seed=0, desc="classifier"):
    """Cross-entropy on ``images`` in [0, 1]; light noise and 1-pixel shifts so that the classifier also
    answers sensibly on imperfect samples."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    model.train()
    for _ in tqdm(range(steps), desc=desc):
        index = torch.randint(0, len(images), (batch_size,))
        x = images[index]
        shift = torch.randint(-1, 2, (2,)).tolist()
        x = torch.roll(x, shifts=shift, dims=(2, 3))
        x = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
        loss = F.cross_entropy(forward(model, x), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def train_reward(images, labels, output_dir, steps):
    config = Dinov2Config(
        image_size=8, patch_size=2, num_channels=1, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=NUM_CLASSES,
    )  # fmt: skip
    model = with_redrawn_weights(Dinov2ForImageClassification(config), seed=0)
    train_classifier(model, lambda m, x: m(pixel_values=(x - 0.5) / 0.5).logits, images, labels, steps, desc="reward")
    model.save_pretrained(output_dir)
    # The trainer preprocesses like the model's processor: no resize needed, normalize [0, 1] to [-1, 1].
    BitImageProcessor(
        size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5]
    ).save_pretrained(output_dir)


class Judge(nn.Module):
    """A small CNN for evaluation: ``features`` (128-d) for the Frechet distance, ``forward`` for classes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.features_head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU())
        self.classifier = nn.Linear(128, NUM_CLASSES)

    def features(self, images):
        return self.features_head(self.conv(images))

    def forward(self, images):
        return self.classifier(self.features(images))


def load_judge(path):
    judge = Judge()
    judge.load_state_dict(load_file(path))
    return judge.eval().requires_grad_(False)


def prepare(output_dir, teacher_steps=1000, classifier_steps=1500):
    """Train what is missing under ``output_dir``; return the paths."""
    torch.set_num_threads(THREADS)
    images, labels, half = load_data()
    paths = {
        "teacher": os.path.join(output_dir, "teacher"),
        "reward": os.path.join(output_dir, "reward"),
        "judge": os.path.join(output_dir, "judge.safetensors"),
        "real_images": os.path.join(output_dir, "real_digits"),
    }
    os.makedirs(output_dir, exist_ok=True)
    if not os.path.exists(os.path.join(paths["teacher"], "model_index.json")):
        train_teacher(images, labels, paths["teacher"], teacher_steps)
    if not os.path.exists(os.path.join(paths["reward"], "config.json")):
        train_reward(to_unit(images[half == 0]), labels[half == 0], paths["reward"], classifier_steps)
    if not os.path.exists(paths["judge"]):
        judge = Judge()
        judge.load_state_dict(redraw(judge.state_dict(), seed=0))
        train_classifier(
            judge, lambda m, x: m(x), to_unit(images[half == 1]), labels[half == 1], classifier_steps, desc="judge"
        )
        save_file(judge.state_dict(), paths["judge"])
    if not os.path.isdir(paths["real_images"]):
        save_class_folders(images[half == 0], labels[half == 0], paths["real_images"])
    return paths


def save_class_folders(images, labels, folder):
    """Digits in [-1, 1] as 8-bit greyscale PNGs in an ImageNet-style tree, ``<label>/<i>.png``: the GAN term's real
    images (``--train_data_dir``). Written whole or not at all."""
    partial = folder + ".tmp"
    shutil.rmtree(partial, ignore_errors=True)
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        os.makedirs(os.path.join(partial, str(label)), exist_ok=True)
        pixels = ((image[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, "L").save(os.path.join(partial, str(label), f"{i}.png"))
    os.replace(partial, folder)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train the digits teacher, reward model and judge.")
    parser.add_argument("--output_dir", default="outputs/digits")
    parser.add_argument("--teacher_steps", type=int, default=1000)
    parser.add_argument("--classifier_steps", type=int, default=1500)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    print(prepare(args.output_dir, args.teacher_steps, args.classifier_steps))


if __name__ == "__main__":
    pin_cpu_arithmetic("examples.digits.prepare")
    main()
