"""No test may touch the network: the Hub is offline for every test, in-process and in the subprocesses the
tests start (set before anything imports huggingface_hub, which reads it once). Property tests draw the same
examples on every run (hypothesis profile "ci"; HYPOTHESIS_PROFILE=explore draws new ones). Each of pytest-xdist's
workers (pytest.ini: -n 2) computes on its share of the cores."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # torch's default counts the cores this process may use (a container's share), os.cpu_count() the host's.
    torch.set_num_threads(max(1, torch.get_num_threads() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def tiny_sit(tmp_path_factory):
    """A tiny pixel-space SiT pipeline folder, a tiny DINOv2 reward folder, and real images in class folders."""
    from tiny_models import tiny_class_folders, tiny_dinov2_classifier, tiny_sit_pipeline

    root = tmp_path_factory.mktemp("tiny_sit")
    return {
        "model": tiny_sit_pipeline(root / "sit"), "reward": tiny_dinov2_classifier(root / "reward"),
        "images": tiny_class_folders(root / "images"),
    }  # fmt: skip


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    """A tiny SDXL pipeline folder, a tiny CLIP reward folder, prompt files (one empty), and captioned images."""
    from tiny_models import tiny_captioned_images, tiny_clip_folder, tiny_sdxl_pipeline

    root = tmp_path_factory.mktemp("tiny_sdxl")
    (root / "prompts.txt").write_text("a cat\na dog\n\na cat on a mat\na dog in the snow\n")
    (root / "empty.txt").write_text("\n  \n")
    return {
        "model": tiny_sdxl_pipeline(root / "sdxl"), "reward": tiny_clip_folder(root / "clip"),
        "prompts": str(root / "prompts.txt"), "empty_prompts": str(root / "empty.txt"),
        "images": tiny_captioned_images(root / "images"),
    }  # fmt: skip


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory):
    """A tiny Wan2.1 T2V pipeline folder, a tiny CLIP reward folder (for ``frames:clip``), and a prompt file."""
    from tiny_models import tiny_clip_folder, tiny_wan_pipeline

    root = tmp_path_factory.mktemp("tiny_wan")
    (root / "prompts.txt").write_text("a cat\na dog\na cat on the mat\na dog in the snow\n")
    return {
        "model": tiny_wan_pipeline(root / "wan"),
        "reward": tiny_clip_folder(root / "clip"),
        "prompts": str(root / "prompts.txt"),
    }
