"""The streaming (block-causal) Wan of amd_utils/pipeline_wan_streaming.py on a tiny WanTransformer3DModel: with a
window as long as the clip and one block it is the stock bidirectional model; block by block with the cache it is
one pass under the block-causal mask, with and without grad; the window and sink are LongLive's; the cache stays
bounded however long the video. The converter from Self-Forcing / LongLive checkpoints, and train_amd_wan_streaming.py
on the tiny Wan: its streaming pipeline reproduces its sample, a student of its own base, two processes."""

import shutil

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from launch import assert_processes_agree, checkpoint_adapters, train_in_process, wan_streaming_args

from amd_utils.pipeline_wan_streaming import block_causal_mask, make_streaming, stream_video, visible_frames

FRAMES, HEIGHT, WIDTH = 8, 4, 6  # latent frames and size: 2 x 3 = 6 tokens a frame after the 2 x 2 patches


def tiny_transformer(seed=0):
    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=8, freq_dim=32, ffn_dim=16, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )  # fmt: skip
    return model.eval().requires_grad_(False)


def inputs(frames=FRAMES, batch=2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, HEIGHT, WIDTH, generator=generator)
    text = torch.randn(batch, 5, 8, generator=generator)
    return x, text


def forward(model, x, text, sigma=0.6):
    return model(x, timestep=torch.full((len(x),), sigma * 1000), encoder_hidden_states=text).sample


def blockwise(model, state, x, text, block):
    """Each block once, writing its keys and values into the cache, as the one pass computes them."""
    state.reset()
    outputs = []
    for start in range(0, x.shape[2], block):
        with state.block(start, write=True):
            outputs.append(forward(model, x[:, :, start : start + block], text))
    return torch.cat(outputs, dim=2)


def test_longlive_window_hand_computed():
    # LongLive's stage 1: blocks of 3, window 12 with 3 sink frames; a block sees the sink and the newest 9
    # frames, its own included.
    assert list(visible_frames(0, 3, 12, 3)) == []
    assert list(visible_frames(9, 12, 12, 3)) == list(range(9))
    assert list(visible_frames(12, 15, 12, 3)) == [0, 1, 2, 6, 7, 8, 9, 10, 11]
    assert list(visible_frames(30, 33, 12, 3)) == [0, 1, 2, 24, 25, 26, 27, 28, 29]
    assert list(visible_frames(6, 9, 4, 0)) == [5]
    assert list(visible_frames(6, 9, -1, 0)) == list(range(6))
    mask = block_causal_mask(6, 2, -1, 0)
    assert mask.tolist() == [[j < 2 * (i // 2 + 1) for j in range(6)] for i in range(6)]


@pytest.mark.parametrize("window", [-1, FRAMES, FRAMES + 4])
def test_one_block_as_long_as_the_clip_is_the_bidirectional_model(window):
    model = tiny_transformer()
    x, text = inputs()
    stock = forward(model, x, text)
    state = make_streaming(model, window, 0)
    assert torch.equal(forward(model, x, text), stock)  # no block in progress: the stock processors
    with state.one_pass(FRAMES):
        torch.testing.assert_close(forward(model, x, text), stock, atol=1e-5, rtol=1e-5)
    state.reset()
    with state.block(0):
        torch.testing.assert_close(forward(model, x, text), stock, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("block", "window", "sink"), [(2, -1, 0), (2, 5, 1), (1, 4, 2), (4, 6, 2)])
def test_block_by_block_with_the_cache_is_one_pass_under_the_block_causal_mask(block, window, sink):
    model = tiny_transformer()
    state = make_streaming(model, window, sink)
    x, text = inputs()
    with state.one_pass(block):
        masked = forward(model, x, text)
    torch.testing.assert_close(blockwise(model, state, x, text, block), masked, atol=1e-5, rtol=1e-5)
    # Some frames are out of the window (or the mask is not all ones): the comparison has teeth.
    assert not torch.allclose(masked, forward(model, x, text), atol=1e-3)


def test_and_so_are_their_gradients():
    # The cache holds keys and values with their graphs: the gradient through it reaches earlier blocks' inputs
    # and the weights as the one pass's does.
    model = tiny_transformer()
    weights = [block.attn1.to_k.weight for block in model.blocks]
    state = make_streaming(model, 5, 1)
    x, text = inputs()
    target = torch.randn_like(x)
    gradients = []
    for one_pass in (True, False):
        for w in weights:
            w.requires_grad_(True).grad = None
        x_leaf = x.clone().requires_grad_(True)
        if one_pass:
            with state.one_pass(2):
                out = forward(model, x_leaf, text)
        else:
            out = blockwise(model, state, x_leaf, text, 2)
        (out * target).sum().backward()
        gradients.append([x_leaf.grad] + [w.grad for w in weights])
    for masked, cached in zip(*gradients):
        torch.testing.assert_close(cached, masked, atol=1e-5, rtol=1e-4)
    assert gradients[1][0][:, :, :2].abs().sum() > 0  # the first block's input gets gradient from later blocks


def test_a_video_longer_than_the_cache_keeps_the_sink_and_a_bounded_window():
    model = tiny_transformer()
    state = make_streaming(model, 6, 2)
    x, text = inputs(frames=30, batch=1)
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.0])
    generator = torch.Generator().manual_seed(0)
    video, exits = stream_video(model, state, x, text, sigmas, 3, generator=generator)
    assert video.shape == x.shape and torch.isfinite(video).all()
    cached = [sorted(snapshot[0]) for _, _, snapshot in exits]
    assert cached[0] == [] and cached[1] == [0, 1, 2]
    # Every block finds what it sees; the cache keeps the sink and at most the window's 4 newest frames but one
    # (what a next block of a single frame would see).
    for (start, _, _), frames in zip(exits, cached):
        assert set(visible_frames(start, start + 3, 6, 2)) <= set(frames)
        assert frames[:2] == [0, 1] or start < 2
        assert len(frames) <= 5
    assert cached[-1] == [0, 1, 24, 25, 26]
    assert state.cache[0] == {}  # the rollout leaves no cache behind


def test_the_rope_offset_is_the_frames_absolute_position():
    # A block at frame s embeds its frames at positions s.. : its rotary table equals the tail of the whole clip's.
    model = tiny_transformer()
    state = make_streaming(model)
    x, _ = inputs()
    whole = model.rope(x)
    with state.block(5):
        tail = model.rope(x[:, :, 5:])
    tokens = (HEIGHT // 2) * (WIDTH // 2)
    whole, tail = (t if isinstance(t, tuple) else (t.transpose(1, 2),) for t in (whole, tail))
    for w, t in zip(whole, tail):
        assert torch.equal(t, w[:, 5 * tokens :])


# ---------------------------------------------------------------- the converter from Self-Forcing / LongLive .pt

# The keys of Self-Forcing's CausalWanModel (33593df wan/modules/causal_model.py, t2v) for one block, as its
# state_dict() lists them: what ode_init.pt and longlive_base.pt hold under "model.".
ORIGINAL_BLOCK_KEYS = [
    "modulation", "self_attn.q.weight", "self_attn.q.bias", "self_attn.k.weight", "self_attn.k.bias",
    "self_attn.v.weight", "self_attn.v.bias", "self_attn.o.weight", "self_attn.o.bias", "self_attn.norm_q.weight",
    "self_attn.norm_k.weight", "norm3.weight", "norm3.bias", "cross_attn.q.weight", "cross_attn.q.bias",
    "cross_attn.k.weight", "cross_attn.k.bias", "cross_attn.v.weight", "cross_attn.v.bias", "cross_attn.o.weight",
    "cross_attn.o.bias", "cross_attn.norm_q.weight", "cross_attn.norm_k.weight", "ffn.0.weight", "ffn.0.bias",
    "ffn.2.weight", "ffn.2.bias",
]  # fmt: skip
ORIGINAL_OTHER_KEYS = [
    "patch_embedding.weight", "patch_embedding.bias", "text_embedding.0.weight", "text_embedding.0.bias",
    "text_embedding.2.weight", "text_embedding.2.bias", "time_embedding.0.weight", "time_embedding.0.bias",
    "time_embedding.2.weight", "time_embedding.2.bias", "time_projection.1.weight", "time_projection.1.bias",
    "head.modulation", "head.head.weight", "head.head.bias",
]  # fmt: skip
# diffusers' name -> the original one, written from the two models' module names (not from diffusers' converter).
TO_ORIGINAL = [
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("proj_out", "head.head"),
    ("attn1.to_out.0", "self_attn.o"),
    ("attn2.to_out.0", "cross_attn.o"),
    ("attn1.to_", "self_attn."),
    ("attn2.to_", "cross_attn."),
    ("attn1.", "self_attn."),
    ("attn2.", "cross_attn."),
    ("norm2", "norm3"),  # the norm before cross-attention: diffusers' norm2, Wan's norm3
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("scale_shift_table", "modulation"),
]


def to_original(key):
    if key == "scale_shift_table":
        return "head.modulation"
    for new, old in TO_ORIGINAL:
        if new in key:
            return key.replace(new, old, 1)
    return key


def write_original_checkpoint(path, model):
    """A checkpoint as Self-Forcing writes it: the weights as 'generator' and an EMA of them (here: doubled) as
    'generator_ema' with FSDP's wrapper names left in, under the wrapper's "model." prefix."""
    state = {to_original(k): v for k, v in model.state_dict().items()}
    layers = len(model.blocks)
    blocks = [f"blocks.{i}.{k}" for i in range(layers) for k in ORIGINAL_BLOCK_KEYS]
    assert sorted(state) == sorted(ORIGINAL_OTHER_KEYS + blocks)
    torch.save({
        "generator": {f"model.{k}": v for k, v in state.items()},
        "generator_ema": {f"model._fsdp_wrapped_module.{k}": 2 * v for k, v in state.items()},
    }, path)  # fmt: skip


def test_the_converter_reads_self_forcing_and_longlive_checkpoints(tmp_path):
    from scripts.convert_wan_causal_to_diffusers import main

    model = tiny_transformer(seed=3)
    model.save_pretrained(tmp_path / "base" / "transformer")
    write_original_checkpoint(tmp_path / "ode_init.pt", model)
    for flags, scale in (([], 1), (["--use_ema"], 2)):
        out = tmp_path / f"converted{scale}"
        main(["--checkpoint", str(tmp_path / "ode_init.pt"), "--config", str(tmp_path / "base"), "--output_dir", str(out), *flags])  # fmt: skip
        converted = WanTransformer3DModel.from_pretrained(out).state_dict()
        assert converted.keys() == model.state_dict().keys()
        assert all(torch.equal(converted[k], scale * v) for k, v in model.state_dict().items())


def test_the_converter_refuses_a_checkpoint_of_another_size_with_one_sentence(tmp_path):
    from scripts.convert_wan_causal_to_diffusers import main

    tiny_transformer().save_pretrained(tmp_path / "base" / "transformer")
    other = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=8, freq_dim=32, ffn_dim=16, num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    )  # fmt: skip
    write_original_checkpoint(tmp_path / "other.pt", other)
    args = ["--checkpoint", str(tmp_path / "other.pt"), "--config", str(tmp_path / "base"), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit, match="does not fit the transformer of .*unexpected .*blocks.2"):
        main(args)
    torch.save({"optimizer": {}}, tmp_path / "bad.pt")
    with pytest.raises(SystemExit, match="has neither 'generator' nor 'model'"):
        main(["--checkpoint", str(tmp_path / "bad.pt"), *args[2:]])
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the trainer and its output on the tiny Wan


def test_the_streaming_pipeline_reproduces_the_trainers_sample_and_streams_past_the_training_length(tiny_wan, tmp_path):
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    import train_amd_wan_streaming as trainer

    out = tmp_path / "out"
    args = trainer.parse_args([str(a) for a in wan_streaming_args(tiny_wan, out, "--max_train_steps", 2)])
    student = train_in_process(trainer, wan_streaming_args(tiny_wan, out, "--max_train_steps", 2))
    for path in ("pipeline.py", "pytorch_lora_weights.safetensors", "pytorch_lora_weights_ema.safetensors",
                 "scheduler/scheduler_config.json", "README.md", "validation/step-2.gif"):  # fmt: skip
        assert (out / path).exists(), path
    card = (out / "README.md").read_text()
    assert "custom_pipeline=out" in card and "num_frame_per_block=1, local_attn_size=2, sink_size=1" in card

    # The trainer's own sample of its validation prompts, as it validates (the seed's generator on the CPU).
    pipe = DiffusionPipeline.from_pretrained(tiny_wan["model"], custom_pipeline=str(out), trust_remote_code=True)
    prompts = ["a cat", "a dog"]
    embed = trainer.PromptEmbeddings(pipe, args.max_sequence_length, torch.float32)
    sigmas = trainer.student_scheduler(args.num_student_steps, args.student_timestep_shift).sigmas
    shape = (2, 16, 3, 2, 2)
    expected = trainer.sample_latents(student, student.stream_state, embed, sigmas, args, prompts, 0, shape, "cpu")

    assert type(pipe).__name__ == "WanStreamingPipeline"
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(out, subfolder="scheduler")
    pipe.load_lora_weights(out, weight_name="pytorch_lora_weights.safetensors")
    settings = dict(height=16, width=16, num_inference_steps=4, num_frame_per_block=1, local_attn_size=2, sink_size=1,
                    max_sequence_length=8)  # fmt: skip
    latents = pipe(prompts, num_frames=9, generator=torch.Generator().manual_seed(0), output_type="latent", **settings)
    torch.testing.assert_close(latents.frames, expected, atol=1e-5, rtol=1e-5)
    # 41 frames: 11 latent frames through a cache that holds 2; a video of them.
    video = pipe("a cat", num_frames=41, generator=torch.Generator().manual_seed(1), **settings).frames
    assert video.shape == (1, 41, 16, 16, 3) and np.isfinite(video).all()


def test_a_causal_student_of_its_own_trains_from_a_converted_checkpoint(tiny_wan, tmp_path):
    # Self-Forcing's ode_init.pt -> the converter -> --student_model_name_or_path: the student adapter goes on that
    # network, the fake stays on the base; the student's base weights are the checkpoint's, not the base's.
    from diffusers import WanTransformer3DModel

    import train_amd_wan_streaming as trainer
    from scripts.convert_wan_causal_to_diffusers import main as convert

    base = WanTransformer3DModel.from_pretrained(tiny_wan["model"], subfolder="transformer")
    causal = WanTransformer3DModel.from_config(base.config)  # other weights: a fresh random init
    write_original_checkpoint(tmp_path / "ode_init.pt", causal)
    convert(["--checkpoint", str(tmp_path / "ode_init.pt"), "--config", tiny_wan["model"], "--output_dir", str(tmp_path / "ode_init")])  # fmt: skip
    out = tmp_path / "out"
    flags = ("--max_train_steps", 2, "--fake_update_ratio", 1, "--student_model_name_or_path", tmp_path / "ode_init")
    student = train_in_process(trainer, wan_streaming_args(tiny_wan, out, *flags))
    assert all(".fake." not in name for name, _ in student.named_parameters())
    block = student.blocks[0].attn1.to_q
    assert torch.equal(block.base_layer.weight, causal.blocks[0].attn1.to_q.weight)
    adapters = checkpoint_adapters(out / "checkpoint-2")
    assert all(adapters["student"][k].abs().sum() > 0 for k in adapters["student"] if "lora_B" in k)
    assert "ode_init" in (out / "README.md").read_text()


def test_a_student_base_of_its_own_naming_the_base_itself_trains_as_the_shared_base_does(tiny_wan, tmp_path):
    # Two networks (the student on a copy of the base) or one carrying both adapters: the same math, the same draws.
    import train_amd_wan_streaming as trainer

    adapters = {}
    for name, flags in (("shared", ()), ("own", ("--student_model_name_or_path", tiny_wan["model"]))):
        out = tmp_path / name
        train_in_process(
            trainer, wan_streaming_args(tiny_wan, out, "--max_train_steps", 2, "--fake_update_ratio", 1, *flags)
        )
        adapters[name] = checkpoint_adapters(out / "checkpoint-2")
    for adapter in ("student", "fake"):
        assert adapters["own"][adapter].keys() == adapters["shared"][adapter].keys()
        assert all(torch.equal(v, adapters["shared"][adapter][k]) for k, v in adapters["own"][adapter].items()), adapter


@pytest.mark.slow
def test_both_processes_of_a_two_process_streaming_run_end_with_the_same_adapters(tiny_wan, tmp_path):
    assert_processes_agree(
        "train_amd_wan_streaming.py",
        wan_streaming_args(tiny_wan, tmp_path / "out", "--max_train_steps", "3", "--fake_update_ratio", "1"),
        tmp_path / "dump",
    )


def test_the_ema_starts_as_a_copy_then_averages_resumes_and_loads_as_a_lora(tiny_wan, tmp_path):
    from diffusers import DiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    import train_amd_wan_streaming as trainer

    flags = ("--fake_update_ratio", 1, "--checkpointing_steps", 1, "--ema_start_step", 1, "--ema_decay", 0.25)
    out = tmp_path / "out"
    train_in_process(trainer, wan_streaming_args(tiny_wan, out, "--max_train_steps", 3, *flags))
    student = {step: checkpoint_adapters(out / f"checkpoint-{step}")["student"] for step in (1, 2, 3)}
    ema = {step: load_file(out / f"checkpoint-{step}" / trainer.EMA_FILE) for step in (2, 3)}
    assert not (out / "checkpoint-1" / trainer.EMA_FILE).exists()  # before --ema_start_step
    for key, value in student[2].items():
        assert torch.equal(ema[2][f"transformer.{key}"], value)  # a copy at its first update
        expected = 0.25 * value + 0.75 * student[3][key]
        torch.testing.assert_close(ema[3][f"transformer.{key}"], expected, atol=1e-7, rtol=0)
    # Resumed from checkpoint 2, the run ends with the same EMA.
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    train_in_process(
        trainer,
        wan_streaming_args(tiny_wan, resumed, "--max_train_steps", 3, "--resume_from_checkpoint", "latest", *flags),
    )
    again = load_file(resumed / "checkpoint-3" / trainer.EMA_FILE)
    assert all(torch.equal(again[key], value) for key, value in ema[3].items())
    # The output's EMA loads with load_lora_weights.
    pipe = DiffusionPipeline.from_pretrained(tiny_wan["model"], custom_pipeline=str(out), trust_remote_code=True)
    pipe.load_lora_weights(out, weight_name=trainer.EMA_FILE, adapter_name="ema")
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="ema")
    assert loaded.keys() == student[3].keys()
    assert all(torch.equal(loaded[key], ema[3][f"transformer.{key}"]) for key in loaded)
