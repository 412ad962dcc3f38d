"""Convert original SiT checkpoints (github.com/willisma/SiT, DiT's key layout) to ``DiTTransformer2DModel``.

The two hold the same network under different names:

    x_embedder.proj                     -> pos_embed.proj
    t_embedder.mlp.0 / mlp.2            -> transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_1 / linear_2
    y_embedder.embedding_table          -> transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table
    blocks.{i}.adaLN_modulation.1       -> transformer_blocks.{i}.norm1.linear
    blocks.{i}.attn.qkv                 -> transformer_blocks.{i}.attn1.to_q / to_k / to_v  (split in three)
    blocks.{i}.attn.proj                -> transformer_blocks.{i}.attn1.to_out.0
    blocks.{i}.mlp.fc1 / fc2            -> transformer_blocks.{i}.ff.net.0.proj / ff.net.2
    final_layer.adaLN_modulation.1      -> proj_out_1
    final_layer.linear                  -> proj_out_2

diffusers keeps a copy of the time and label embedders in every block (the final layer uses block 0's), so
those weights are repeated. ``pos_embed`` is not carried over: diffusers recomputes the same fixed 2D sin-cos
table, which the conversion checks (up to the small drift SiT's EMA leaves in the released checkpoints). Two
differences are not in the weights: the config sets ``norm_eps=1e-6`` (SiT's LayerNorms; diffusers defaults to
1e-5 for the norm before the MLP), and diffusers' time projection uses a frequency shift SiT does not have, which
``amd_utils.pipeline_sit.use_sit_time_embedding`` removes after every load.
"""

import argparse
import math
import os

import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed

# Whole modules (weight and bias) renamed one to one.
TOP_LEVEL_RENAMES = {
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}
BLOCK_RENAMES = {
    "adaLN_modulation.1": "norm1.linear",
    "attn.proj": "attn1.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
# Shared in SiT, copied into every diffusers block.
EMBEDDER_RENAMES = {
    "t_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2",
}
LABEL_TABLE = "y_embedder.embedding_table.weight"
DIFFUSERS_LABEL_TABLE = "norm1.emb.class_embedder.embedding_table.weight"
# diffusers' BasicTransformerBlock builds its MLP as 4 * hidden; other ratios cannot be represented.
MLP_RATIO = 4


def load_sit_checkpoint(path):
    """The SiT state dict stored at ``path``: the EMA weights of a training checkpoint if present, else its
    "model" entry, else the file's dict itself (the released checkpoints are plain state dicts)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SiT checkpoint not found: {path}")
    # SiT's train.py also stores its argparse Namespace under "args"; allow it so that weights_only works.
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("ema", "model"):
        if key in checkpoint:
            return checkpoint[key]
    return checkpoint


def _module_keys(name):
    return [f"{name}.weight", f"{name}.bias"]


def count_blocks(state_dict):
    indices = {int(key.split(".")[1]) for key in state_dict if key.startswith("blocks.")}
    if not indices:
        raise ValueError("The state dict has no 'blocks.{i}' keys, so it is not a SiT/DiT checkpoint.")
    return max(indices) + 1


def expected_sit_keys(num_layers):
    """Every key of an original SiT state dict with ``num_layers`` blocks."""
    keys = ["pos_embed", LABEL_TABLE]
    for name in [*TOP_LEVEL_RENAMES, *EMBEDDER_RENAMES]:
        keys += _module_keys(name)
    for i in range(num_layers):
        for name in [*BLOCK_RENAMES, "attn.qkv"]:
            keys += _module_keys(f"blocks.{i}.{name}")
    return keys


def check_sit_keys(state_dict, num_layers):
    expected = expected_sit_keys(num_layers)
    missing = [key for key in expected if key not in state_dict]
    unexpected = sorted(set(state_dict) - set(expected))
    if missing:
        raise ValueError(f"The SiT state dict lacks {len(missing)} expected keys, e.g. {missing[:3]}.")
    if unexpected:
        raise ValueError(
            f"The SiT state dict has {len(unexpected)} keys this conversion does not know, e.g. {unexpected[:3]}."
        )


def infer_dit_config(state_dict, num_attention_heads):
    """``DiTTransformer2DModel`` kwargs read off the shapes of a SiT state dict."""
    hidden_size, in_channels, patch_size, patch_width = state_dict["x_embedder.proj.weight"].shape
    num_tokens = state_dict["pos_embed"].shape[1]
    grid_size = math.isqrt(num_tokens)
    mlp_hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    if patch_size != patch_width or grid_size * grid_size != num_tokens:
        raise ValueError(
            f"Only square patches and images are supported, got {patch_size}x{patch_width} patches, {num_tokens} "
            "tokens."
        )
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"The hidden size {hidden_size} is not divisible by num_attention_heads={num_attention_heads}."
        )
    if mlp_hidden != MLP_RATIO * hidden_size:
        raise ValueError(
            f"diffusers' DiT needs an MLP of {MLP_RATIO} x the hidden size ({MLP_RATIO * hidden_size}), "
            f"the checkpoint's has {mlp_hidden}."
        )
    return {
        "num_attention_heads": num_attention_heads,
        "attention_head_dim": hidden_size // num_attention_heads,
        "in_channels": in_channels,
        "out_channels": state_dict["final_layer.linear.weight"].shape[0] // patch_size**2,
        "num_layers": count_blocks(state_dict),
        "sample_size": grid_size * patch_size,
        "patch_size": patch_size,
        "num_embeds_ada_norm": state_dict[LABEL_TABLE].shape[0] - 1,  # the last row is the null class
        "activation_fn": "gelu-approximate",
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
    }


# How far SiT's EMA moves its frozen pos_embed, relative to each entry. SiT's train.py (willisma/SiT, update_ema())
# also averages pos_embed (a frozen Parameter is still in named_parameters(); its TODO warns of "small numerical
# changes of pos_embed"), in float32: e <- fl(fl(e * d) + fl(x * a)) with d = fl32(0.9999), a = fl32(1 - 0.9999).
# The two do not sum to 1, which pulls e to x * a / (1 - d) = x * (1 - 1.66e-4); rounding can hold e at most
# 2 * 2**-24 * |x| / (1 - d) = 1.2e-3 |x| farther. Simulated over SiT-XL/2's table, the EMA settles within 10k updates
# at 1.66e-4 |x| (52k of 295k entries past float32's epsilon). A foreign table (learned, another grid) is off by O(1).
POS_EMBED_EMA_RTOL = 2e-3


def check_pos_embed(pos_embed, hidden_size, grid_size):
    """Refuse a ``pos_embed`` that is not the fixed 2D sin-cos table diffusers' DiT recomputes, up to the drift
    that SiT's EMA leaves in it (``POS_EMBED_EMA_RTOL``)."""
    expected = get_2d_sincos_pos_embed(hidden_size, grid_size, base_size=grid_size, output_type="pt")
    same_shape = tuple(pos_embed.shape) == (1, *expected.shape)
    atol = torch.finfo(torch.float32).eps  # the table's zeros stay zero under the EMA
    if not same_shape or not torch.allclose(
        pos_embed[0].double(), expected.double(), rtol=POS_EMBED_EMA_RTOL, atol=atol
    ):
        raise ValueError("The checkpoint's pos_embed is not the fixed 2D sin-cos table diffusers' DiT recomputes.")


def convert_block(state_dict, i):
    prefix, new_prefix = f"blocks.{i}.", f"transformer_blocks.{i}."
    converted = {}
    for old, new in BLOCK_RENAMES.items():
        for param in ("weight", "bias"):
            converted[f"{new_prefix}{new}.{param}"] = state_dict[f"{prefix}{old}.{param}"]
    # timm's fused qkv stacks q, k, v along the output dimension, each laid out head by head like to_q.
    for param in ("weight", "bias"):
        q, k, v = state_dict[f"{prefix}attn.qkv.{param}"].chunk(3, dim=0)
        for name, tensor in (("to_q", q), ("to_k", k), ("to_v", v)):
            converted[f"{new_prefix}attn1.{name}.{param}"] = tensor
    for old, new in EMBEDDER_RENAMES.items():
        for param in ("weight", "bias"):
            converted[f"{new_prefix}{new}.{param}"] = state_dict[f"{old}.{param}"]
    converted[f"{new_prefix}{DIFFUSERS_LABEL_TABLE}"] = state_dict[LABEL_TABLE]
    return converted


def convert_sit_state_dict(state_dict, num_attention_heads=16):
    """``(config, diffusers_state_dict)`` for ``DiTTransformer2DModel(**config).load_state_dict(...)``.

    ``num_attention_heads`` is not stored in the checkpoint (SiT/DiT-L and XL: 16, B: 12, S: 6).
    The returned tensors may share memory with ``state_dict`` and with each other (the per-block embedder
    copies); ``load_state_dict`` copies them into the model."""
    num_layers = count_blocks(state_dict)
    check_sit_keys(state_dict, num_layers)
    config = infer_dit_config(state_dict, num_attention_heads)
    hidden_size = config["num_attention_heads"] * config["attention_head_dim"]
    check_pos_embed(state_dict["pos_embed"], hidden_size, config["sample_size"] // config["patch_size"])

    converted = {}
    for old, new in TOP_LEVEL_RENAMES.items():
        for param in ("weight", "bias"):
            converted[f"{new}.{param}"] = state_dict[f"{old}.{param}"]
    for i in range(num_layers):
        converted.update(convert_block(state_dict, i))
    return config, converted
