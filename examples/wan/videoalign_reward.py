"""VideoAlign (VideoReward, Liu et al. 2025), the paper's video reward, as a ``--reward`` plug-in for train_amd_wan.py.

VideoAlign is not pip-installable, so this file is not run by the tests. To use it:

    git clone https://github.com/KwaiVGI/VideoAlign && pip install -r VideoAlign/requirements.txt  # or its environment.yaml
    huggingface-cli download KwaiVGI/VideoReward --local-dir VideoAlign/checkpoints
    export PYTHONPATH=$PWD/VideoAlign:$PWD VIDEOALIGN_CHECKPOINT=$PWD/VideoAlign/checkpoints
    accelerate launch train_amd_wan.py ... --reward examples.wan.videoalign_reward:overall

``overall`` returns VideoAlign's Overall score (its VQ + MQ + TA); ``motion_quality`` only MQ. The calls follow
VideoAlign's ``inference.py`` (``VideoVLMRewardInference(...).reward(video_paths, prompts, use_norm=True)``,
one dict per video): it reads video files, so the decoded videos are written to temporary MP4s first.
"""

import functools
import os
import tempfile

import torch


@functools.cache
def _inferencer(device):
    from inference import VideoVLMRewardInference  # VideoAlign's own module, on PYTHONPATH

    return VideoVLMRewardInference(os.environ["VIDEOALIGN_CHECKPOINT"], device=device, dtype=torch.bfloat16)


def _scores(videos, prompts, key, fps=16):
    from diffusers.utils import export_to_video

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, video in enumerate(videos):  # (F, 3, H, W) in [0, 1]
            paths.append(os.path.join(folder, f"{i}.mp4"))
            export_to_video(list(video.permute(0, 2, 3, 1).float().cpu().numpy()), paths[-1], fps=fps)
        results = _inferencer(str(videos.device)).reward(paths, list(prompts), use_norm=True)
    return torch.tensor([result[key] for result in results], device=videos.device)


def overall(videos, prompts):
    return _scores(videos, prompts, "Overall")


def motion_quality(videos, prompts):
    return _scores(videos, prompts, "MQ")
