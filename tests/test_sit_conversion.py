"""SiT checkpoint -> DiTTransformer2DModel: the converted model against a plain-torch reference of SiT's forward.

The reference below is written from SiT's models.py (github.com/willisma/SiT), reading the original keys
directly; it does not call diffusers.
"""

import argparse
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, DiTTransformer2DModel

from amd_utils.pipeline_sit import use_sit_time_embedding
from amd_utils.sit_conversion import convert_sit_state_dict, load_sit_checkpoint

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "scripts", "convert_sit_to_diffusers.py")

HIDDEN, HEADS, DEPTH, PATCH, IN_CHANNELS, IMAGE_SIZE, NUM_CLASSES = 64, 4, 2, 2, 4, 8, 10
OUT_CHANNELS = 2 * IN_CHANNELS  # learn_sigma
FREQUENCY_DIM = 256
TOLERANCE = dict(atol=1e-12, rtol=1e-12)  # float64 on both sides


# ----- the original SiT, functional -----


def mae_sincos_pos_embed(dim, grid_size):
    """MAE's get_2d_sincos_pos_embed, as SiT uses it (numpy, float64)."""

    def one_dim(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))  # w first
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_size, grid_size)
    return np.concatenate([one_dim(dim // 2, grid[0]), one_dim(dim // 2, grid[1])], axis=1)


def sit_timestep_embedding(t, dim=FREQUENCY_DIM, max_period=10000):
    """SiT's TimestepEmbedder.timestep_embedding; like the original, it computes in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sit_forward(state_dict, x, t, y, num_heads, eps=1e-6):
    """SiT.forward(x, t, y) with learn_sigma: the first in_channels output channels."""
    w = {key: value.to(x.dtype) for key, value in state_dict.items()}

    def linear(h, name):
        return F.linear(h, w[f"{name}.weight"], w[f"{name}.bias"])

    def modulate(h, shift, scale):
        return F.layer_norm(h, h.shape[-1:], eps=eps) * (1 + scale[:, None]) + shift[:, None]

    def attention(h, name):
        n, tokens, dim = h.shape
        qkv = linear(h, f"{name}.qkv").reshape(n, tokens, 3, num_heads, dim // num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax(q @ k.transpose(-2, -1) * (dim // num_heads) ** -0.5, dim=-1)
        return linear((weights @ v).transpose(1, 2).reshape(n, tokens, dim), f"{name}.proj")

    patch = w["x_embedder.proj.weight"].shape[-1]
    h = F.conv2d(x, w["x_embedder.proj.weight"], w["x_embedder.proj.bias"], stride=patch)
    h = h.flatten(2).transpose(1, 2) + w["pos_embed"]
    t_emb = linear(F.silu(linear(sit_timestep_embedding(t).to(x.dtype), "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = t_emb + w["y_embedder.embedding_table.weight"][y]
    num_blocks = len({key.split(".")[1] for key in w if key.startswith("blocks.")})
    for i in range(num_blocks):
        block = f"blocks.{i}"
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = linear(
            F.silu(c), f"{block}.adaLN_modulation.1"
        ).chunk(6, dim=1)
        h = h + gate_msa[:, None] * attention(modulate(h, shift_msa, scale_msa), f"{block}.attn")
        mlp_in = modulate(h, shift_mlp, scale_mlp)
        mlp_out = linear(F.gelu(linear(mlp_in, f"{block}.mlp.fc1"), approximate="tanh"), f"{block}.mlp.fc2")
        h = h + gate_mlp[:, None] * mlp_out
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    h = linear(modulate(h, shift, scale), "final_layer.linear")

    n, in_channels, grid = x.shape[0], x.shape[1], int(h.shape[1] ** 0.5)
    out_channels = h.shape[-1] // patch**2
    h = torch.einsum("nhwpqc->nchpwq", h.reshape(n, grid, grid, patch, patch, out_channels))
    return h.reshape(n, out_channels, grid * patch, grid * patch)[:, :in_channels]


def tiny_sit_state_dict(seed=0, hidden=HIDDEN, mlp_ratio=4):
    """Random weights in SiT's key layout, float32 like the released checkpoints. Every tensor is non-zero:
    SiT zero-initializes adaLN and the final layer, which would hide mapping mistakes."""
    mlp_hidden = mlp_ratio * hidden
    linears = {
        "t_embedder.mlp.0": (hidden, FREQUENCY_DIM),
        "t_embedder.mlp.2": (hidden, hidden),
        "final_layer.adaLN_modulation.1": (2 * hidden, hidden),
        "final_layer.linear": (PATCH * PATCH * OUT_CHANNELS, hidden),
    }
    for i in range(DEPTH):
        linears.update({
            f"blocks.{i}.adaLN_modulation.1": (6 * hidden, hidden),
            f"blocks.{i}.attn.qkv": (3 * hidden, hidden),
            f"blocks.{i}.attn.proj": (hidden, hidden),
            f"blocks.{i}.mlp.fc1": (mlp_hidden, hidden),
            f"blocks.{i}.mlp.fc2": (hidden, mlp_hidden),
        })  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    state_dict = {}
    for name, (fan_out, fan_in) in linears.items():
        state_dict[f"{name}.weight"] = torch.randn(fan_out, fan_in, generator=gen) / math.sqrt(fan_in)
        state_dict[f"{name}.bias"] = 0.1 * torch.randn(fan_out, generator=gen)
    state_dict["x_embedder.proj.weight"] = torch.randn(hidden, IN_CHANNELS, PATCH, PATCH, generator=gen) / 4
    state_dict["x_embedder.proj.bias"] = 0.1 * torch.randn(hidden, generator=gen)
    state_dict["y_embedder.embedding_table.weight"] = torch.randn(NUM_CLASSES + 1, hidden, generator=gen)
    pos_embed = mae_sincos_pos_embed(hidden, IMAGE_SIZE // PATCH)
    state_dict["pos_embed"] = torch.from_numpy(pos_embed).float().unsqueeze(0)
    return state_dict


def tiny_inputs(seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.0, 0.13, 0.5, 0.77, 0.99, 1.0], dtype=torch.float64)
    y = torch.tensor([0, 3, 9, NUM_CLASSES, 5, NUM_CLASSES])  # NUM_CLASSES: the null class
    return x, t, y


def converted_model(state_dict, sit_time=True, **config_overrides):
    config, converted = convert_sit_state_dict(state_dict, num_attention_heads=HEADS)
    model = DiTTransformer2DModel(**{**config, **config_overrides})
    model.load_state_dict(converted, strict=True)
    if sit_time:
        use_sit_time_embedding(model)
    return model.double().eval()


def model_forward(model, x, t, y):
    with torch.no_grad():
        return model(x, timestep=t, class_labels=y).sample[:, :IN_CHANNELS]


@pytest.fixture(scope="module")
def state_dict():
    return tiny_sit_state_dict()


@pytest.fixture(scope="module")
def reference(state_dict):
    x, t, y = tiny_inputs()
    return sit_forward(state_dict, x, t, y, HEADS)


# ----- the conversion -----


def test_converted_model_matches_original_sit(state_dict, reference):
    x, t, y = tiny_inputs()
    output = model_forward(converted_model(state_dict), x, t, y)
    assert reference.abs().mean() > 0.1  # a non-trivial output
    torch.testing.assert_close(output, reference, **TOLERANCE)


def test_time_embedding_convention_is_needed(state_dict, reference):
    x, t, y = tiny_inputs()
    diffusers_time = model_forward(converted_model(state_dict, sit_time=False), x, t, y)
    sit_time = model_forward(converted_model(state_dict, sit_time=True), x, t, y)
    assert (diffusers_time - reference).abs().max() > 1e-4
    torch.testing.assert_close(sit_time, reference, **TOLERANCE)


def test_norm_eps_is_needed(state_dict, reference):
    x, t, y = tiny_inputs()
    output = model_forward(converted_model(state_dict, norm_eps=1e-5), x, t, y)  # diffusers' default
    assert (output - reference).abs().max() > 1e-7


def test_recomputed_pos_embed_equals_checkpoint(state_dict):
    model = converted_model(state_dict)
    assert "pos_embed" not in convert_sit_state_dict(state_dict, HEADS)[1]
    torch.testing.assert_close(model.pos_embed.pos_embed.float(), state_dict["pos_embed"], atol=0, rtol=0)


def test_pos_embed_moved_by_sits_ema_is_accepted(state_dict):
    # SiT's train.py averages the frozen pos_embed too: update_ema(ema, model, decay=0) once, then every step
    # ema.mul_(0.9999).add_(param, alpha=1 - 0.9999) in float32. The released checkpoints hold the EMA weights.
    table = state_dict["pos_embed"]
    ema = table.clone()
    for _ in range(12000):
        ema.mul_(0.9999).add_(table, alpha=1 - 0.9999)
    drift = (ema - table).abs()
    assert (drift > torch.finfo(torch.float32).eps).sum() > 0.1 * table.numel()  # a check at epsilon refuses it
    assert (drift <= 2e-4 * table.abs()).all()  # about 1.66e-4 |x|: the fp32 EMA coefficients do not sum to 1
    config, converted = convert_sit_state_dict({**state_dict, "pos_embed": ema}, HEADS)
    assert "pos_embed" not in converted and config["sample_size"] == IMAGE_SIZE


@pytest.mark.parametrize("change", [lambda table: table + 1e-3, lambda table: table * 1.01], ids=["shifted", "scaled"])
def test_foreign_pos_embed_is_refused(state_dict, change):
    # 1% is five times the tolerance left for SiT's EMA (POS_EMBED_EMA_RTOL)
    foreign = {**state_dict, "pos_embed": change(state_dict["pos_embed"])}
    with pytest.raises(ValueError, match="pos_embed"):
        convert_sit_state_dict(foreign, HEADS)


def test_config_is_read_from_the_tensors(state_dict):
    config, converted = convert_sit_state_dict(state_dict, num_attention_heads=HEADS)
    assert config == {
        "num_attention_heads": HEADS,
        "attention_head_dim": HIDDEN // HEADS,
        "in_channels": IN_CHANNELS,
        "out_channels": OUT_CHANNELS,
        "num_layers": DEPTH,
        "sample_size": IMAGE_SIZE,
        "patch_size": PATCH,
        "num_embeds_ada_norm": NUM_CLASSES,
        "activation_fn": "gelu-approximate",
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
    }
    assert set(converted) == set(DiTTransformer2DModel(**config).state_dict())


@pytest.mark.parametrize(
    "change, num_heads, message",
    [
        (lambda sd: sd, 5, "not divisible by num_attention_heads=5"),
        (lambda sd: {k: v for k, v in sd.items() if k != "blocks.1.attn.proj.bias"}, HEADS, "lacks 1 expected keys"),
        (lambda sd: {**sd, "blocks.0.attn.q_norm.weight": torch.ones(1)}, HEADS, "does not know"),
        (lambda sd: tiny_sit_state_dict(mlp_ratio=2), HEADS, "MLP of 4 x the hidden size"),
    ],
    ids=["head_count", "missing_key", "unknown_key", "mlp_ratio"],
)
def test_bad_input_raises_value_error(state_dict, change, num_heads, message):
    with pytest.raises(ValueError, match=message):
        convert_sit_state_dict(change(state_dict), num_attention_heads=num_heads)


def test_load_sit_checkpoint_prefers_ema(tmp_path, state_dict):
    ema = {key: value + 1 for key, value in state_dict.items()}
    # As SiT's train.py writes them, argparse Namespace included.
    wrapped = {"model": state_dict, "ema": ema, "opt": {}, "args": argparse.Namespace(model="SiT-XL/2")}
    torch.save(wrapped, tmp_path / "train.pt")
    torch.save({"model": state_dict}, tmp_path / "model.pt")
    torch.save(state_dict, tmp_path / "plain.pt")
    for name, expected in (("train.pt", ema), ("model.pt", state_dict), ("plain.pt", state_dict)):
        loaded = load_sit_checkpoint(str(tmp_path / name))
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_sit_checkpoint(str(tmp_path / "missing.pt"))


# ----- the command line -----


def run_script(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, SCRIPT, *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_writes_a_loadable_pipeline(tmp_path, state_dict):
    torch.save(state_dict, tmp_path / "sit.pt")
    out = tmp_path / "pipeline"
    result = run_script(
        "--checkpoint", str(tmp_path / "sit.pt"), "--output_dir", str(out), "--num_attention_heads", "4"
    )
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and "from_pretrained" in result.stdout

    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    images = pipe(class_labels=[0, 3], num_inference_steps=2, output_type="pt").images
    assert images.shape == (2, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(images).all()


def test_cli_reports_a_missing_checkpoint(tmp_path):
    out = tmp_path / "pipeline"
    result = run_script("--checkpoint", str(tmp_path / "missing.pt"), "--output_dir", str(out))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"SiT checkpoint not found: {tmp_path / 'missing.pt'}"]
    assert not out.exists()
