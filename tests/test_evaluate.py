"""scripts/evaluate.py on tiny SDXL and SiT students trained here, with tiny reward models and an Inception
network with random weights, all loaded through the script's own code, offline."""

import importlib.util
import json
import os
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionXLPipeline
from launch import sdxl_args, sit_args, train_in_process, wan_args, wan_streaming_args
from PIL import Image
from tiny_models import tiny_clip_folder

import train_amd_sdxl
import train_amd_sit
import train_amd_wan
import train_amd_wan_streaming

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Loaded from its file under its own name: ``evaluate`` is also the name of a Hugging Face package.
_spec = importlib.util.spec_from_file_location("evaluate_script", os.path.join(REPO, "scripts", "evaluate.py"))
evaluate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """torch-fidelity's Inception-v3 at random weights, saved where --metric_model inception= reads it."""
    from torch_fidelity import feature_extractor_inceptionv3 as module

    torch.manual_seed(0)
    with (
        mock.patch.object(module, "load_state_dict_from_url", return_value=None),
        mock.patch.object(module.FeatureExtractorInceptionV3, "load_state_dict"),
    ):
        network = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(network.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def real_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (12 + i, 10, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return str(folder)


@pytest.fixture(scope="module")
def sit_student(tiny_sit, tmp_path_factory):
    out = tmp_path_factory.mktemp("sit_student") / "out"
    train_in_process(train_amd_sit, sit_args(tiny_sit, out, "--max_train_steps", "2"))
    return str(out)


@pytest.fixture(scope="module")
def sdxl_student(tiny_sdxl, tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl_student") / "out"
    train_in_process(train_amd_sdxl, sdxl_args(tiny_sdxl, out, "--max_train_steps", "2"))
    return str(out)


def run(argv):
    evaluate.main([str(arg) for arg in argv])


def sample(folder, i):
    return np.asarray(Image.open(os.path.join(folder, f"{i:06d}.png"))).astype(int)


@pytest.mark.slow
def test_sit_table_grid_and_resume(tiny_sit, sit_student, inception_weights, real_images, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = [
        "--pretrained_model_name_or_path", tiny_sit["model"], "--student", f"amd={sit_student}", "--teacher_steps", "3",
        "--teacher_guidance_scale", "2", "--num_samples", "6", "--batch_size", "4", "--class_labels", "1", "3",
        "--metrics", "dinov2", "fid", "is", "--metric_model", f"dinov2={tiny_sit['reward']}",
        "--metric_model", f"inception={inception_weights}", "--fid_reference", real_images, "--fid_resolution", "32",
        "--grid_samples", "4", "--output_dir", out,
    ]  # fmt: skip
    run(argv)
    results = json.loads((out / "results.json").read_text())
    assert [row["model"] for row in results["rows"]] == ["teacher, 3 steps, w = 2", "amd"]
    for row in results["rows"]:
        assert all(np.isfinite(row[m]) for m in ("dinov2", "fid", "is", "is_std")) and row["fid"] > 0
    assert results["settings"]["kind"] == "sit" and results["settings"]["metrics"] == ["dinov2", "fid", "is"]
    table = (out / "results.md").read_text()
    assert table.startswith("| model | dinov2 | fid | is |") and "| amd | " in table
    # The grid: a row per model, --grid_samples columns of 8 px samples, 2 px apart, enlarged to 64 px.
    assert Image.open(out / "grid.png").size == (4 * 64 + 3 * 2, 2 * 64 + 2)
    # The student is sampled as its folder says (4 steps, no guidance), the teacher with CFG: they differ.
    student, teacher = out / "samples" / "student_amd", out / "samples" / "teacher"
    assert np.abs(sample(student, 0) - sample(teacher, 0)).max() > 0
    # Same class and seed as a direct call of the student pipeline (sample 2: class 1, seed 2).
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sit_student, trust_remote_code=True)
    direct = pipe(class_labels=[1], generator=[torch.Generator().manual_seed(2)], output_type="np").images[0]
    assert np.abs(sample(student, 2) - np.round(direct.squeeze(-1) * 255)).max() <= 1

    # Resume: only the missing sample is made again, and it comes out the same; the table is the same.
    kept = {i: os.path.getmtime(student / f"{i:06d}.png") for i in range(6) if i != 3}
    before = sample(student, 3)
    os.remove(student / "000003.png")
    os.remove(out / "results.md")
    run(argv)
    assert all(os.path.getmtime(student / f"{i:06d}.png") == mtime for i, mtime in kept.items())
    assert np.abs(sample(student, 3) - before).max() <= 1
    again = json.loads((out / "results.json").read_text())["rows"]
    assert again[1]["dinov2"] == pytest.approx(results["rows"][1]["dinov2"], rel=1e-3)

    # Other sampling settings in the same folder: one sentence, nothing touched.
    with pytest.raises(
        SystemExit, match="holds samples made with other teacher_steps, seed: give another --output_dir"
    ):
        run([*argv, "--teacher_steps", "4", "--seed", "1"])
    # A larger --num_samples adds samples to the same folder.
    run([*argv, "--num_samples", "7"])
    assert os.path.exists(student / "000006.png") and os.path.getmtime(student / "000000.png") == kept[0]


@pytest.mark.slow
def test_sdxl_student_is_sampled_as_its_card_says(tiny_sdxl, sdxl_student, tmp_path, capsys):
    out = tmp_path / "eval"
    clip = tiny_clip_folder(tmp_path / "clip")
    run([
        "--pretrained_model_name_or_path", tiny_sdxl["model"], "--student", sdxl_student, "--prompts_file",
        tiny_sdxl["prompts"], "--num_samples", "3", "--resolution", "16", "--teacher_steps", "2",
        "--metrics", "clip", "pickscore", "imagereward", "--metric_model", f"clip={clip}",
        "--metric_model", f"pickscore={clip}", "--output_dir", out,
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "Skipping imagereward: the ImageReward package does not import here" in printed
    results = json.loads((out / "results.json").read_text())
    assert [row["model"] for row in results["rows"]] == ["teacher, 2 steps, w = 8", "out"]
    assert set(results["rows"][1]) == {"model", "clip", "pickscore"}

    # Sample 1 is stock diffusers with the LoRA, LCMScheduler at the card's timesteps, prompt 1 and seed 1.
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl["model"])
    pipe.load_lora_weights(sdxl_student, weight_name="pytorch_lora_weights.safetensors")
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    direct = pipe("a dog", num_inference_steps=4, timesteps=[999, 749, 499, 249], guidance_scale=0, height=16,
                  width=16, generator=[torch.Generator().manual_seed(1)], output_type="np").images[0]  # fmt: skip
    assert np.abs(sample(out / "samples" / "student_out", 1) - np.round(direct * 255)).max() <= 1


@pytest.fixture(scope="module")
def wan_student(tiny_wan, tmp_path_factory):
    out = tmp_path_factory.mktemp("wan_student") / "out"
    train_in_process(train_amd_wan, wan_args(tiny_wan, out, "--max_train_steps", "2"))
    return str(out)


VIDEO_REWARD = """
def mean_red(videos, prompts):
    return videos[:, :, 0].flatten(1).mean(dim=1)
"""


@pytest.mark.slow
def test_wan_rows_videos_grid_and_resume(tiny_wan, wan_student, tmp_path, monkeypatch):
    # A module name of its own, dropped afterwards: other tests import their own "video_reward".
    (tmp_path / "evaluate_video_reward.py").write_text(VIDEO_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("evaluate_video_reward")
    del sys.modules["evaluate_video_reward"]
    monkeypatch.setitem(sys.modules, "evaluate_video_reward", module)  # gone again after the test
    out = tmp_path / "eval"
    argv = [
        "--pretrained_model_name_or_path", tiny_wan["model"], "--student", f"amd={wan_student}", "--prompts_file",
        tiny_wan["prompts"], "--num_samples", "3", "--batch_size", "2", "--teacher_steps", "2", "--num_frames", "5",
        "--height", "16", "--width", "16", "--metrics", "frames:clip", "evaluate_video_reward:mean_red",
        "--metric_model", f"clip={tiny_wan['reward']}", "--grid_samples", "2", "--output_dir", out,
    ]  # fmt: skip
    run(argv)
    results = json.loads((out / "results.json").read_text())
    assert [row["model"] for row in results["rows"]] == ["teacher, 2 steps, w = 4", "amd"]
    assert all(
        np.isfinite(row[m]) for row in results["rows"] for m in ("frames:clip", "evaluate_video_reward:mean_red")
    )
    assert (out / "results.md").read_text().startswith("| model | frames:clip | evaluate_video_reward:mean_red |")
    student = out / "samples" / "student_amd"
    videos = evaluate.load_videos([student / f"{i:06d}.mp4" for i in range(3)])
    assert videos.shape == (3, 5, 3, 16, 16)
    # The grids: the middle frames, and the whole videos a frame each (2 columns of 16 px enlarged to 64 px).
    assert Image.open(out / "grid.png").size == (2 * 64 + 2, 2 * 64 + 2)
    assert Image.open(out / "grid.gif").n_frames == 5

    # Sample 1 of the student row is stock WanPipeline with the saved scheduler and LoRA, prompt 1, seed 1 (as the
    # generator and as the global seed: the stochastic scheduler draws from it), without guidance.
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    args = evaluate.parse_args([str(a) for a in argv])
    args.teacher_guidance_scale = 4.0
    rows = evaluate.wan_rows(args, "cpu", torch.float32)
    next(rows)
    _, _, sample = next(rows)
    ours = sample(["a dog"], [torch.Generator("cpu").manual_seed(1)])[0]
    pipe = WanPipeline.from_pretrained(tiny_wan["model"])
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(wan_student, subfolder="scheduler")
    pipe.load_lora_weights(wan_student, weight_name="pytorch_lora_weights.safetensors")
    torch.manual_seed(1)
    direct = pipe("a dog", height=16, width=16, num_frames=5, num_inference_steps=4, guidance_scale=1.0,
                  generator=torch.Generator().manual_seed(1), output_type="pt").frames[0]  # fmt: skip
    torch.testing.assert_close(ours, direct, rtol=0, atol=0)
    assert (videos[1] - direct).abs().mean() < 0.05  # the MP4 is lossy (H.264)

    # Resume: only the missing video is made again.
    kept = {i: os.path.getmtime(student / f"{i:06d}.mp4") for i in (0, 2)}
    os.remove(student / "000001.mp4")
    run(argv)
    assert all(os.path.getmtime(student / f"{i:06d}.mp4") == mtime for i, mtime in kept.items())
    assert (student / "000001.mp4").exists()


def test_a_streaming_student_row_is_its_streaming_pipeline(tiny_wan, tmp_path):
    # The student's card names its block, window, sink and causal base; the row samples with the pipeline.py it ships.
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    student = tmp_path / "streaming"
    train_in_process(train_amd_wan_streaming, wan_streaming_args(tiny_wan, student, "--max_train_steps", "1"))
    argv = ["--pretrained_model_name_or_path", tiny_wan["model"], "--student", f"live={student}", "--prompts_file",
            tiny_wan["prompts"], "--num_frames", "13", "--height", "16", "--width", "16", "--metrics", "frames:clip",
            "--metric_model", f"clip={tiny_wan['reward']}", "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    args = evaluate.parse_args(argv)
    args.teacher_guidance_scale = 4.0
    rows = evaluate.wan_rows(args, "cpu", torch.float32)
    next(rows)
    name, _, sample = next(rows)
    ours = sample(["a dog"], [torch.Generator("cpu").manual_seed(1)])[0]
    pipe = DiffusionPipeline.from_pretrained(tiny_wan["model"], custom_pipeline=str(student), trust_remote_code=True)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(student, subfolder="scheduler")
    pipe.load_lora_weights(student, weight_name="pytorch_lora_weights.safetensors")
    direct = pipe("a dog", height=16, width=16, num_frames=13, num_inference_steps=4, num_frame_per_block=1,
                  local_attn_size=2, sink_size=1, generator=torch.Generator().manual_seed(1), output_type="pt").frames[0]  # fmt: skip
    assert name == "live" and ours.shape == (13, 3, 16, 16)
    torch.testing.assert_close(ours, direct, rtol=0, atol=0)
    # An evaluation length its blocks do not divide gets one sentence (blocks of 1 divide all: make them 3).
    card = student / "README.md"
    card.write_text(card.read_text().replace("| `num_frame_per_block` | `1` |", "| `num_frame_per_block` | `3` |"))
    with pytest.raises(
        SystemExit, match=r"makes blocks of 3 latent frames: give --num_frames 4 \* \(3 \* n\) - 3, not 13"
    ):
        evaluate.main([*argv, "--num_samples", "1", "--teacher_steps", "1"])
    assert not (tmp_path / "eval").exists()


VBENCH_STUB = """
import json, os, subprocess, urllib.error

class VBench:  # vbench 0.1.5's interface: VBench(device, full_info_dir, output_path).evaluate(...)
    def __init__(self, device, full_info_dir, output_path):
        self.output_path = output_path
        os.makedirs(output_path, exist_ok=True)

    def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, mode="vbench_standard", **kwargs):
        with open(os.path.join(self.output_path, name + "_call.json"), "w") as f:
            json.dump({"videos_path": videos_path, "prompt_list": prompt_list, "dimension_list": dimension_list,
                       "mode": mode}, f)
        if dimension_list == ["dynamic_degree"]:  # as its RAFT weights fail to download offline (wget)
            raise subprocess.CalledProcessError(1, ["wget", "-P", "cache/raft_model/", "https://example.com/models.zip"])
        if dimension_list == ["imaging_quality"]:  # as subject_consistency's DINO does offline (torch.hub)
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        with open(os.path.join(self.output_path, name + "_eval_results.json"), "w") as f:
            json.dump({dimension_list[0]: [0.25 + len(prompt_list), []]}, f)
"""


def install_vbench_stub(folder, monkeypatch, suite=()):
    """The stub as the ``vbench`` package for this test only, with ``suite`` as its ``VBench_full_info.json``."""
    folder.mkdir()
    (folder / "__init__.py").write_text(VBENCH_STUB)
    (folder / "VBench_full_info.json").write_text(json.dumps(list(suite)))
    spec = importlib.util.spec_from_file_location("vbench", folder / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "vbench", module)


@pytest.mark.slow
def test_vbench_dimensions_through_its_custom_prompt_mode_on_a_stub(
    tiny_wan, wan_student, tmp_path, monkeypatch, capsys
):
    # vbench 0.1.5 does not install beside this stack (it pins transformers 4.33.2): a stub with its interface
    # stands in, and records how it was called.
    install_vbench_stub(tmp_path / "vbench", monkeypatch)
    out = tmp_path / "eval"
    run([
        "--pretrained_model_name_or_path", tiny_wan["model"], "--student", f"amd={wan_student}", "--prompts_file",
        tiny_wan["prompts"], "--num_samples", "2", "--teacher_steps", "2", "--num_frames", "5", "--height", "16",
        "--width", "16", "--metrics", "frames:clip", "--metric_model", f"clip={tiny_wan['reward']}",
        "--vbench_dimensions", "subject_consistency", "dynamic_degree", "imaging_quality", "--output_dir", out,
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert (
        "Skipping vbench:dynamic_degree: VBench could not download its weights (https://example.com/models.zip)"
        in printed
    )
    assert "Skipping vbench:imaging_quality: VBench could not download its weights (URLError: <urlopen" in printed
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert all(row["vbench:subject_consistency"] == 2.25 and "vbench:dynamic_degree" not in row for row in rows)
    assert (out / "results.md").read_text().startswith("| model | frames:clip | vbench:subject_consistency |")
    call = json.loads((out / "vbench" / "student_amd_subject_consistency_call.json").read_text())
    assert call["mode"] == "custom_input" and call["dimension_list"] == ["subject_consistency"]
    assert call["videos_path"] == str(out / "samples" / "student_amd")
    assert call["prompt_list"] == {"000000.mp4": "a cat", "000001.mp4": "a dog"}


@pytest.mark.slow
def test_vbench_suite_samples_its_prompts_and_links_the_names_its_standard_mode_reads(
    tiny_wan, wan_student, tmp_path, monkeypatch
):
    suite = [{"prompt_en": "a red car", "dimension": ["color"]}, {"prompt_en": "a tree", "dimension": ["scene"]},
             {"prompt_en": "a still cat", "dimension": ["temporal_flickering", "color"]}]  # fmt: skip
    install_vbench_stub(tmp_path / "vbench", monkeypatch, suite)
    out = tmp_path / "eval"
    run([
        "--pretrained_model_name_or_path", tiny_wan["model"], "--student", f"amd={wan_student}", "--teacher_steps",
        "1", "--num_frames", "5", "--height", "16", "--width", "16", "--batch_size", "5", "--metrics", "frames:clip",
        "--metric_model", f"clip={tiny_wan['reward']}", "--vbench_suite", "--vbench_dimensions", "color",
        "--output_dir", out,
    ])  # fmt: skip
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert all(row["vbench:color"] == 0.25 for row in rows)  # the stub's score: 0.25 + no prompt_list
    student = out / "samples" / "student_amd"
    assert sorted(os.listdir(student)) == [f"{i:06d}.mp4" for i in range(10)]  # 2 prompts x 5 videos
    call = json.loads((out / "vbench" / "student_amd_color_call.json").read_text())
    assert call["mode"] == "vbench_standard" and call["prompt_list"] == []
    links = {name: os.readlink(os.path.join(call["videos_path"], name)) for name in os.listdir(call["videos_path"])}
    assert links == {f"{prompt}-{k}.mp4": str(student / f"{5 * p + k:06d}.mp4")
                     for p, prompt in enumerate(["a red car", "a still cat"]) for k in range(5)}  # fmt: skip


def test_without_vbench_its_dimensions_are_skipped_with_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vbench", None)  # as where it is not installed
    args = evaluate.parse_args(
        ["--pretrained_model_name_or_path", str(tmp_path), "--vbench_dimensions", "imaging_quality"]
    )
    assert evaluate.vbench_scores(args, str(tmp_path), ["a cat"], "cpu") == {}
    assert "Skipping VBench: the vbench package does not import here" in capsys.readouterr().out


def test_the_vbench_suite_without_vbench_gets_one_sentence(tiny_wan, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vbench", None)
    out = tmp_path / "eval"
    argv = ["--pretrained_model_name_or_path", tiny_wan["model"], "--metrics", "frames:clip", "--vbench_suite",
            "--vbench_dimensions", "color", "--output_dir", out]  # fmt: skip
    with pytest.raises(SystemExit, match="--vbench_suite reads VBench's prompt suite from the vbench package, which"):
        run(argv)
    assert not out.exists()


def test_without_an_mp4_encoder_wan_rows_get_one_sentence(tiny_wan, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    out = tmp_path / "eval"
    argv = ["--pretrained_model_name_or_path", tiny_wan["model"], "--prompts_file", tiny_wan["prompts"],
            "--output_dir", out]  # fmt: skip
    with pytest.raises(SystemExit, match="videos are written as MP4 by imageio-ffmpeg: pip install imageio"):
        run(argv)
    assert not out.exists()


def test_a_video_metric_that_is_not_one_gets_one_sentence(tiny_wan, tmp_path):
    out = tmp_path / "eval"
    argv = ["--pretrained_model_name_or_path", tiny_wan["model"], "--prompts_file", tiny_wan["prompts"],
            "--metrics", "hpsv2", "--output_dir", out]  # fmt: skip
    with pytest.raises(SystemExit, match="'hpsv2' is not a video metric: use frames:hpsv2"):
        run(argv)
    assert not out.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (["--fid_reference", "missing_folder"], "--fid_reference 'missing_folder' does not exist"),
        (["--metrics", "fid"], "FID needs real images: give --fid_reference"),
        (["--student", "amd=no/such/folder"], "is not a folder (nor a Hub id)"),
        (["--metrics", "hpsv2"], "hpsv2, pickscore, clip and imagereward score prompts: use them with SDXL"),
        (["--prompts_file", "prompts.txt"], "SiT is class-conditional: give --class_labels instead of prompts"),
        (["--metric_model", "fid"], "--metric_model takes NAME=PATH"),
        (["--metrics", "fidd"], "unknown metric 'fidd'"),
        (["--metric_model", "fid=x.pth"], "--metric_model names 'fid': use one of"),
        (["--vbench_dimensions", "beauty"], "--vbench_dimensions: unknown VBench dimension 'beauty'"),
        (["--vbench_dimensions", "color"], "'color' needs the labels of VBench's own prompt suite"),
        (["--vbench_suite"], "--vbench_suite samples the prompts of the --vbench_dimensions: name at least one"),
        (["--vbench_dimensions", "imaging_quality"], "VBench scores videos: give --vbench_dimensions with a Wan"),
    ],
)
def test_bad_input_gets_one_sentence_and_writes_nothing(tiny_sit, tmp_path, change, message, capsys):
    out = tmp_path / "eval"
    argv = ["--pretrained_model_name_or_path", tiny_sit["model"], "--metrics", "dinov2", "--output_dir", out]
    with pytest.raises(SystemExit) as exit:
        run([*argv, *change])
    assert message in str(exit.value.code) + capsys.readouterr().err
    assert not out.exists()


def test_fid_reference_from_a_npz_or_a_folder_whose_statistics_are_cached(real_images, tmp_path):
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.arange(3.0), sigma=np.eye(3))
    args = evaluate.parse_args(["--pretrained_model_name_or_path", str(tmp_path), "--fid_reference", str(stats),
                                "--output_dir", str(tmp_path / "eval"), "--fid_resolution", "4"])  # fmt: skip
    mu, sigma = evaluate.reference_statistics(args, None, "cpu")
    assert np.array_equal(mu, np.arange(3.0)) and np.array_equal(sigma, np.eye(3))
    np.savez(stats, mean=np.arange(3.0))
    with pytest.raises(ValueError, match="holds no 'mu' and 'sigma' arrays"):
        evaluate.reference_statistics(args, None, "cpu")

    # A folder: the features of its images, centre-cropped and resized, then cached for the next run.
    calls = []

    def network(batch):  # stands in for Inception: the mean colour of each image as its features
        calls.append(len(batch))
        return batch.float().mean((2, 3)), torch.zeros(len(batch), 2)

    args.fid_reference = real_images
    mu, sigma = evaluate.reference_statistics(args, network, "cpu")
    images = [np.asarray(evaluate._center_crop_resize(Image.open(os.path.join(real_images, f"{i}.png")), 4))
              for i in range(5)]  # fmt: skip
    colours = torch.tensor(np.stack([image.reshape(-1, 3).mean(0) for image in images]))
    assert np.allclose(mu, colours.mean(0).numpy()) and np.allclose(sigma, torch.cov(colours.T).numpy())
    assert sum(calls) == 5
    again = evaluate.reference_statistics(args, network, "cpu")
    assert sum(calls) == 5 and np.array_equal(again[0], mu)

    # Fewer than two real images: one sentence, and the output folder is not made.
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(lonely / "0.png")
    args.fid_reference, args.output_dir = str(lonely), str(tmp_path / "other")
    with pytest.raises(ValueError, match="holds fewer than 2 images"):
        evaluate.reference_statistics(args, network, "cpu")
    assert not os.path.exists(args.output_dir)
