#!/usr/bin/env python
"""Convert an original SiT checkpoint (e.g. ``SiT-XL-2-256x256.pt``) into a diffusers pipeline folder.

    python scripts/convert_sit_to_diffusers.py --checkpoint SiT-XL-2-256x256.pt \
        --output_dir ./sit-xl-2-256 --vae stabilityai/sd-vae-ft-ema

The folder holds a ``DiTTransformer2DModel``, a ``FlowMatchEulerDiscreteScheduler``, the VAE if given, and
``pipeline_sit.py``; it loads with ``DiffusionPipeline.from_pretrained(output_dir, trust_remote_code=True)``
and is what ``train_amd_sit.py --pretrained_model_name_or_path`` expects.
"""

import argparse
import os
import sys

# The repository root is not an installed package: make ``amd_utils`` importable when run as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", required=True, help="Original SiT .pt file (a plain state dict or a train.py checkpoint)."
    )
    parser.add_argument("--output_dir", required=True, help="Where to write the pipeline folder.")
    parser.add_argument(
        "--num_attention_heads", type=int, default=16, help="Not stored in the checkpoint: 16 (L, XL), 12 (B), 6 (S)."
    )
    parser.add_argument("--vae", default=None, help="Optional AutoencoderKL to include (id or path).")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"SiT checkpoint not found: {args.checkpoint}")

    # Imported after the argument checks so that bad input is reported at once, without the slow diffusers import.
    from diffusers import AutoencoderKL, DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler

    from amd_utils.sit import save_sit_pipeline
    from amd_utils.sit_conversion import convert_sit_state_dict, load_sit_checkpoint

    try:
        config, state_dict = convert_sit_state_dict(load_sit_checkpoint(args.checkpoint), args.num_attention_heads)
    except ValueError as err:
        raise SystemExit(f"Cannot convert {args.checkpoint}: {err}")
    transformer = DiTTransformer2DModel(**config)
    transformer.load_state_dict(state_dict, strict=True)
    vae = AutoencoderKL.from_pretrained(args.vae) if args.vae else None
    save_sit_pipeline(args.output_dir, transformer, FlowMatchEulerDiscreteScheduler(), vae=vae)

    print(f"Wrote the SiT pipeline to {os.path.abspath(args.output_dir)}")
    print(f'Load it with: DiffusionPipeline.from_pretrained("{args.output_dir}", trust_remote_code=True)')


if __name__ == "__main__":
    main()
