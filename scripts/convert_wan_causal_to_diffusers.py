#!/usr/bin/env python
"""Convert a Self-Forcing / LongLive generator checkpoint (``.pt``) into a diffusers ``WanTransformer3DModel`` folder.

    python scripts/convert_wan_causal_to_diffusers.py --checkpoint checkpoints/ode_init.pt \
        --config Wan-AI/Wan2.1-T2V-1.3B-Diffusers --output_dir ode_init-diffusers

The checkpoints (Self-Forcing's ``ode_init.pt``, ``self_forcing_dmd.pt``; LongLive's ``longlive_base.pt``) hold
``{"generator": ..., "generator_ema": ...}`` (or ``{"model": ...}``) with the original Wan names under ``model.``
(their ``WanDiffusionWrapper``): ``model.blocks.0.self_attn.q.weight``. The causal network has the weights of the
bidirectional Wan, so diffusers' own single-file conversion renames them. The folder is what
``train_amd_wan_streaming.py --student_model_name_or_path`` expects; the causal attention is not in the weights.
"""

import argparse
import os
import sys

# The repository root is not an installed package: make ``amd_utils`` importable when run as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Wrappers around the network whose names training code leaves in the keys (FSDP, activation checkpointing, compile).
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="The .pt file (ode_init.pt, longlive_base.pt, ...).")
    parser.add_argument(
        "--config",
        required=True,
        help="A diffusers Wan pipeline (folder or Hub id) whose transformer config fits the checkpoint, e.g. "
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers.",
    )
    parser.add_argument("--output_dir", required=True, help="Where to write the WanTransformer3DModel folder.")
    parser.add_argument("--use_ema", action="store_true", help="Convert 'generator_ema' instead of 'generator'.")
    return parser.parse_args(argv)


def original_state_dict(checkpoint, use_ema=False):
    """The generator's weights in a loaded checkpoint under Wan's original names (``blocks.0.self_attn.q.weight``)."""
    name = "generator_ema" if use_ema else "generator"
    if name in checkpoint:
        state = checkpoint[name]
    elif use_ema:
        raise ValueError(f"it has no 'generator_ema' (its keys: {sorted(checkpoint)[:5]}): drop --use_ema.")
    elif "model" in checkpoint and isinstance(checkpoint["model"], dict):
        state = checkpoint["model"]
    else:
        raise ValueError(f"it has neither 'generator' nor 'model' (its keys: {sorted(checkpoint)[:5]}).")
    original = {}
    for key, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.replace(prefix, "")
        original[key.removeprefix("model.")] = value
    return original


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"checkpoint not found: {args.checkpoint}")

    # Imported after the argument checks so that bad input is reported at once, without the slow diffusers import.
    import torch
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    try:
        config = WanTransformer3DModel.load_config(args.config, subfolder="transformer")
    except (OSError, ValueError):
        raise SystemExit(f"cannot read a Wan transformer config from {args.config!r}: give a pipeline folder.")
    try:
        state = original_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True), args.use_ema)
    except ValueError as err:
        raise SystemExit(f"cannot convert {args.checkpoint}: {err}")
    state = convert_wan_transformer_to_diffusers(state)
    transformer = WanTransformer3DModel.from_config(config)
    missing, unexpected = transformer.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(
            f"{args.checkpoint} does not fit the transformer of {args.config}: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}; give the --config of the model it was trained from."
        )
    transformer.to(next(iter(state.values())).dtype).save_pretrained(args.output_dir)
    print(f"Wrote the transformer to {os.path.abspath(args.output_dir)}")


if __name__ == "__main__":
    main()
