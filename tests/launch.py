"""Running the trainers' real command lines from tests: ``accelerate launch`` on CPU, offline."""

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}


def launch(script, args, num_processes=1, config_file=None, succeed=True):
    """``accelerate launch <script> <args>``; asserts success (failure if not ``succeed``) and returns the completed
    process. With an FSDP ``config_file``, its FSDP runs on CPU processes (tests/fsdp_on_cpu.py)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "1"]
    command += ["--num_processes", str(num_processes)]
    if num_processes > 1:  # a port of its own: another test's processes may be running (pytest -n)
        command += ["--main_process_port", str(free_port())]
    env = dict(ENV)
    if config_file is not None:
        command += ["--config_file", config_file, "tests/fsdp_on_cpu.py"]
        env["ACCELERATE_USE_CPU"] = "true"
    elif num_processes > 1:  # accelerate's multi-process CPU mode: torchrun processes with gloo
        command.append("--multi_gpu")
        env["ACCELERATE_USE_CPU"] = "true"
    result = subprocess.run([*command, script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert (result.returncode == 0) == succeed, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def free_port():
    """A TCP port that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def with_flags(args, change):
    """``args`` with each flag of ``change`` set to its value (replaced if present, appended if not), or
    removed with its value when the value is None; a value True appends the flag alone (a switch)."""
    args = list(args)
    for flag, value in change.items():
        if value is True:
            args.append(flag)
        elif flag in args:
            i = args.index(flag)
            args[i : i + 2] = [] if value is None else [flag, value]
        elif value is not None:
            args += [flag, value]
    return args


def assert_fails_with_one_sentence(script, args, message, output_dir):
    """The script exits with status 2, its last line is ``<script>: error: ...message...`` with no traceback,
    and the existing output folder (holding only keep.txt) is untouched."""
    result = subprocess.run(
        [sys.executable, script, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert message in last_line and last_line.startswith(f"{script}: error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert os.listdir(output_dir) == ["keep.txt"] and (output_dir / "keep.txt").read_text() == "earlier results"


def assert_fsdp_launch_fails_with_one_sentence(script, args, message, output_dir, config_file):
    """Under FSDP (2 CPU processes) the script stops with ``<script>: error: ...message...`` from each process,
    without a traceback of its own, and the existing output folder (holding only keep.txt) is untouched."""
    result = launch(script, args, num_processes=2, config_file=config_file, succeed=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{script}: error: ")]
    assert len(errors) == 2 and all(message in line for line in errors), result.stderr[-3000:]
    assert f'File "{script}"' not in result.stderr
    assert os.listdir(output_dir) == ["keep.txt"] and (output_dir / "keep.txt").read_text() == "earlier results"


def assert_processes_agree(script, args, folder):
    """A 2-process run of ``script``'s trainer ends with the same adapters (and GAN head) on both processes."""
    folder.mkdir()
    result = launch("tests/train_and_dump.py", [os.path.splitext(script)[0], str(folder), *args], num_processes=2)
    assert "Num processes: 2" in result.stdout + result.stderr
    for name in ("student", "fake", "head")[: 3 if (folder / "rank0_head.safetensors").exists() else 2]:
        rank0, rank1 = (load_file(str(folder / f"rank{rank}_{name}.safetensors")) for rank in (0, 1))
        assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[key], rank1[key]) for key in rank0), name


def assert_survives_sigkill(script, args, output_dir, straight_dir, steps, seed=0):
    """Kill a run of ``script`` with SIGKILL, first in the middle of writing a checkpoint (its adapter files
    are written late: tests/slow_saves.py), then at a moment drawn with ``seed`` after its next checkpoint;
    resume each time with 'latest'. The run must end with the adapters of an uninterrupted run."""
    import random
    import time

    rng = random.Random(seed)
    args = [*args, "--max_train_steps", str(steps), "--checkpointing_steps", "1", "--resume_from_checkpoint", "latest"]
    launch(script, with_flags(args, {"--output_dir": str(straight_dir)}))
    command = [sys.executable, "tests/slow_saves.py", script, *args]
    for kill_at in ("a save", "a random moment"):
        process = subprocess.Popen(
            command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        while process.poll() is None:
            found = os.listdir(output_dir) if os.path.isdir(output_dir) else []
            if kill_at == "a save" and any(name.startswith("tmp-checkpoint-") for name in found):
                break
            if kill_at == "a random moment" and any(name.startswith("checkpoint-") for name in found):
                time.sleep(rng.uniform(0.0, 1.5))
                break
            time.sleep(0.002)
        process.kill()  # SIGKILL: no clean-up of any kind
        assert process.wait() == -9, process.stderr.read()[-3000:]
        if kill_at == "a save":
            assert any(name.startswith("tmp-checkpoint-") for name in os.listdir(output_dir))  # left incomplete
    result = launch(script, args)
    assert "Resuming from" in result.stdout + result.stderr
    assert_same_adapters(straight_dir / f"checkpoint-{steps}", output_dir / f"checkpoint-{steps}")


def checkpoint_adapters(checkpoint):
    """The two adapters' weights saved in a ``checkpoint-N`` folder."""
    return {name: load_file(str(checkpoint / f"{name}_lora.safetensors")) for name in ("student", "fake")}


def assert_same_adapters(checkpoint_a, checkpoint_b):
    """Both checkpoints hold the same adapter weights, key for key (to float tolerance)."""
    a, b = checkpoint_adapters(checkpoint_a), checkpoint_adapters(checkpoint_b)
    for name in ("student", "fake"):
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            torch.testing.assert_close(a[name][key], b[name][key], atol=1e-6, rtol=1e-5)


def tensorboard_scalars(output_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}  # the run's folder, and the tracker's hyper-parameter folder beneath it
    for folder in {root for root, _, files in os.walk(output_dir / "logs") if any("tfevents" in f for f in files)}:
        events = EventAccumulator(folder)
        events.Reload()
        scalars.update({tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]})
    return scalars


def sit_args(tiny, output_dir, *extra):
    """train_amd_sit.py's flags for the ``tiny_sit`` fixture: 4 student steps, K = 4, CFG 2."""
    return [
        "--pretrained_model_name_or_path", tiny["model"], "--reward", "dinov2", "--reward_model_name_or_path", tiny["reward"],
        "--output_dir", str(output_dir), "--train_batch_size", "8", "--group_size", "4", "--lora_rank", "4",
        "--fake_update_ratio", "2", "--learning_rate", "1e-3", "--real_guidance_scale", "2.0",
        "--validation_class_labels", "0", "1", "2", "3", "--report_to", "none", *extra,
    ]  # fmt: skip


def sdxl_args(tiny, output_dir, *extra):
    """train_amd_sdxl.py's flags for the ``tiny_sdxl`` fixture: 16 px images, K = 2, CFG 8, no warm-up."""
    return [
        "--pretrained_model_name_or_path", tiny["model"], "--prompts_file", tiny["prompts"], "--reward", "clip",
        "--reward_model_name_or_path", tiny["reward"], "--resolution", "16", "--reward_resolution", "32",
        "--output_dir", str(output_dir), "--train_batch_size", "4", "--group_size", "2", "--lora_rank", "4",
        "--lora_alpha", "8", "--fake_update_ratio", "2", "--learning_rate", "1e-2", "--lr_warmup_steps", "0",
        "--real_guidance_scale", "8", "--validation_steps", "100", "--checkpointing_steps", "2", "--report_to", "none", *extra,
    ]  # fmt: skip


def wan_args(tiny, output_dir, *extra):
    """train_amd_wan.py's flags for the ``tiny_wan`` fixture: 16 x 16 px, 5 frames (2 latent frames), K = 2,
    CFG 4 with a short negative prompt, 8 text tokens."""
    return [
        "--pretrained_model_name_or_path", tiny["model"], "--prompts_file", tiny["prompts"], "--reward", "frames:clip",
        "--reward_model_name_or_path", tiny["reward"], "--reward_num_frames", "2", "--height", "16", "--width", "16",
        "--num_frames", "5", "--max_sequence_length", "8", "--negative_prompt", "snow", "--output_dir", str(output_dir),
        "--train_batch_size", "4", "--group_size", "2", "--lora_rank", "4", "--fake_update_ratio", "2",
        "--learning_rate", "1e-3", "--fake_learning_rate", "1e-3", "--validation_steps", "100",
        "--checkpointing_steps", "2", "--report_to", "none", *extra,
    ]  # fmt: skip


def wan_streaming_args(tiny, output_dir, *extra):
    """train_amd_wan_streaming.py's flags for the ``tiny_wan`` fixture: wan_args at 9 frames (3 latent frames) in
    blocks of 1 frame, a window of 2 with 1 sink frame (the middle frame leaves the cache), the EMA from the start."""
    args = with_flags(wan_args(tiny, output_dir), {"--num_frames": "9"})
    return [*args, "--num_frame_per_block", "1", "--local_attn_size", "2", "--sink_size", "1", "--ema_start_step", "0",
            *extra]  # fmt: skip


def train_in_process(trainer, args):
    """``trainer.main(trainer.parse_args(args))`` in this process, which skips an interpreter and its imports
    (seconds per run); returns the network carrying the trained adapters. accelerate's process-wide state is
    reset afterwards so that the next run may choose other settings."""
    from accelerate.state import AcceleratorState, GradientState

    try:
        return trainer.main(trainer.parse_args([str(arg) for arg in args]))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
