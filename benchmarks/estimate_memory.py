#!/usr/bin/env python
"""Peak GPU memory of a trainer's step at full size, estimated on the CPU with fake tensors (no GPU, no weights).

    python benchmarks/estimate_memory.py --model sdxl --train_batch_size 8
    python benchmarks/estimate_memory.py --model sit --train_batch_size 32
    python benchmarks/estimate_memory.py --model wan --wan_size 14B            # 480 x 832 x 81
    python benchmarks/estimate_memory.py --model wan --wan_size 14B --num_frames 49 --height 480 --width 832
    python benchmarks/estimate_memory.py --model wan_streaming  # the streaming trainer, 1.3B (its two bases: 1.3B)

The networks are built on the meta device from their published configurations (``benchmark_step.CONFIGS``); each
weight becomes a ``FakeTensor`` on the CPU (a tensor with a shape and no data), and the trainer's own ``main()``
runs two steps with both adapters updated, with the flags of ``benchmark_step.py``'s GPU run, under
:class:`LiveStorages`, which adds up the bytes of the storages alive at each moment. Loading is patched to build
the fake networks (``from_pretrained``, ``open_clip.create_model``); writing images and outputs is skipped.

What the count does not see, and a real GPU run adds: the CUDA context, cuDNN and cuBLAS workspaces, the caching
allocator's reserved-but-unallocated memory and fragmentation, NCCL buffers. The kernels differ too: on fake CPU
tensors attention dispatches to the flash kernel for CPU, which keeps what CUDA's fused kernels keep (the output
and a log-sum-exp), and autocast is the CPU's. docs/memory.md compares the estimates with the measurements there are
(SDXL and SiT on an H200); benchmarks/gpu_acceptance.py prints them beside new ones.

Fake tensors are an internal PyTorch API: tested on torch 2.14.1; on 2.5.1 the trainer's step fails inside FakeTensor.
"""

import argparse
import contextlib
import functools
import importlib
import os
import sys
import tempfile
import weakref
from unittest import mock

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_step import CONFIGS, LORA_RANK, REPO, TRAIN_BATCH_SIZE, build  # noqa: E402

sys.path.insert(0, REPO)

GIB = 2**30
BLOCK = 512  # the CUDA caching allocator rounds every allocation up to a multiple of 512 bytes


class LiveStorages(TorchDispatchMode):
    """Adds up the bytes of the storages alive: each counted once however many tensors view it, rounded up to the
    allocator's 512 B, and subtracted when it is freed. ``peak`` is the most at any moment.

    A value read from a fake tensor (``.item()``, ``bool()``), which fake tensors cannot give, is answered with 0,
    True or 1.0: an index of 0, a finite loss, a reward of 1. Boolean-mask indexing, whose result size depends on
    the values, is answered as if every entry of the mask were true (the most memory it can take)."""

    def __init__(self):
        super().__init__()
        self.live = {}  # id(storage) -> bytes
        self.now = self.peak = 0

    def track(self, tensor):
        """Count ``tensor``'s storage (once); returns its rounded size. Meta tensors (a network being built, before
        its weights become fake) hold no memory and are not counted."""
        if tensor.device.type == "meta":
            return 0
        storage = tensor.untyped_storage()
        key = id(storage)
        if key not in self.live:
            self.live[key] = -(-storage.nbytes() // BLOCK) * BLOCK
            self.now += self.live[key]
            self.peak = max(self.peak, self.now)
            weakref.finalize(storage, self._free, key)
        return self.live[key]

    def untrack(self, tensor):
        """Stop counting ``tensor``'s storage (kept off the GPU), now and for as long as it lives."""
        self.track(tensor)
        self.now -= self.live[id(tensor.untyped_storage())]
        self.live[id(tensor.untyped_storage())] = 0

    def _free(self, key):
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            out = func(*args, **kwargs)
        except DataDependentOutputException:  # _local_scalar_dense: .item(), bool(), tolist()
            dtype = args[0].dtype
            return True if dtype == torch.bool else 1.0 if dtype.is_floating_point else 0
        except DynamicOutputShapeException:  # x[mask]
            if func is not torch.ops.aten.index.Tensor:
                raise
            indices = [torch.arange(i.numel()) if i is not None and i.dtype == torch.bool else i for i in args[1]]
            out = func(args[0], indices)
        tree_map_only(torch.Tensor, self.track, out)
        return out


def fake_module(module, mode, dtype=None):
    """``module`` (built on the meta device) with every parameter and buffer a FakeTensor on the CPU, cast to
    ``dtype`` if given, except in the submodules the class keeps in float32 (``_keep_in_fp32_modules``, as
    ``from_pretrained`` does). Tied weights stay tied."""
    converted = {}  # id of the meta tensor -> its fake (the module holds every meta tensor until replaced)
    keep_fp32 = set(getattr(module, "_keep_in_fp32_modules", None) or ())

    def fake(tensor, cast):
        if id(tensor) not in converted:
            meta = tensor.to(dtype) if cast and tensor.is_floating_point() else tensor
            converted[id(tensor)] = mode.fake_tensor_converter.from_meta_and_device(mode, meta, "cpu")
        return converted[id(tensor)]

    for name, submodule in module.named_modules():
        cast = dtype is not None and not keep_fp32 & set(name.split("."))
        for key, param in submodule._parameters.items():
            if param is not None:
                submodule._parameters[key] = torch.nn.Parameter(fake(param, cast), requires_grad=param.requires_grad)
        for key, buffer in submodule._buffers.items():
            if buffer is not None:
                submodule._buffers[key] = fake(buffer, cast)
    return module


@contextlib.contextmanager
def fake_loading(mode, counter, off_gpu=()):
    """Within: ``from_pretrained`` of every diffusers and transformers model, and ``open_clip.create_model``,
    build the network from its config with fake weights, counted by ``counter`` unless its class is named in
    ``off_gpu`` (a text encoder the trainer keeps on the CPU); ``load_state_dict`` into fake weights and moving them
    to a device do nothing; AdamW steps with its CUDA default (``foreach``, which keeps one more copy of the states
    while it steps). Yields ``{class name: bytes of the weights loaded}``."""
    import diffusers
    import open_clip
    import transformers

    def finish(model, dtype):
        fake_module(model, mode, dtype)
        name = type(model).__name__
        storages = {id(t.untyped_storage()): t for t in [*model.parameters(), *model.buffers()]}.values()
        if name in off_gpu:
            for tensor in storages:
                counter.untrack(tensor)
        else:
            loaded[name] = loaded.get(name, 0) + sum(counter.track(tensor) for tensor in storages)
        return model.eval()

    def diffusers_load(cls, path, subfolder=None, torch_dtype=None, **kwargs):
        with torch.device("meta"):
            model = cls.from_config(cls.load_config(path, subfolder=subfolder))
        return finish(model, torch_dtype)

    def transformers_load(cls, path, *args, subfolder="", torch_dtype=None, dtype=None, **kwargs):
        config = kwargs.get("config") or cls.config_class.from_pretrained(path, subfolder=subfolder)
        with torch.device("meta"):
            model = cls(config)
        return finish(model, torch_dtype or dtype)

    def open_clip_create(name, *args, **kwargs):
        with torch.device("meta"):
            model = create_model(name, pretrained=None, device="meta")
        return finish(model, None)

    def is_fake(module):
        return any(isinstance(p, torch._subclasses.FakeTensor) for p in module.parameters())

    def load_state_dict(self, state_dict, *args, **kwargs):
        return None if is_fake(self) else module_load_state_dict(self, state_dict, *args, **kwargs)

    def to(self, *args, **kwargs):
        # Every device is the CPU the fake weights are on, so only a dtype changes them. nn.Module.to would swap
        # each tensor for its converted copy, which fake tensors refuse: replace them instead.
        if not is_fake(self):
            return module_to(self, *args, **kwargs)
        dtype = torch._C._nn._parse_to(*args, **kwargs)[1]
        for submodule in self.modules() if dtype is not None else ():
            for tensors in (submodule._parameters, submodule._buffers):
                for name, tensor in tensors.items():
                    if tensor is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                        converted = tensor.detach().to(dtype)
                        is_param = isinstance(tensor, torch.nn.Parameter)
                        tensors[name] = torch.nn.Parameter(converted, tensor.requires_grad) if is_param else converted
        return self

    create_model = open_clip.create_model
    module_load_state_dict, module_to = torch.nn.Module.load_state_dict, torch.nn.Module.to
    loaded = {}
    with contextlib.ExitStack() as stack:
        for owner, name, value in [
            (diffusers.ModelMixin, "from_pretrained", classmethod(diffusers_load)),
            (transformers.PreTrainedModel, "from_pretrained", classmethod(transformers_load)),
            (open_clip, "create_model", open_clip_create),
            (torch.nn.Module, "load_state_dict", load_state_dict),
            (torch.nn.Module, "to", to),
            (torch.optim, "AdamW", functools.partial(torch.optim.AdamW, foreach=True)),
        ]:
            stack.enter_context(mock.patch.object(owner, name, value))
        yield loaded


def run_trainer(model, flags, mode, counter):
    """The trainer's ``main()`` under the fake mode and ``counter``, with images and outputs not written; returns
    the bytes of the frozen networks it loaded, by class."""
    from accelerate.state import AcceleratorState, GradientState

    trainer = importlib.import_module(f"train_amd_{model}")
    writers = ("save_outputs", "save_and_log_grid", "save_and_log_video_grid")
    skipped = {name: lambda *args, **kwargs: None for name in writers if hasattr(trainer, name)}
    args = trainer.parse_args(flags)
    off_gpu = ("UMT5EncoderModel",) if getattr(args, "text_encoder_device", None) == "cpu" else ()
    try:
        with (
            mock.patch.multiple(trainer, **skipped),
            mock.patch.dict(os.environ, ACCELERATE_USE_CPU="true"),  # fake tensors live on the CPU, GPU or not
            fake_loading(mode, counter, off_gpu) as loaded,
            mode,
            counter,
        ):
            trainer.main(args)
        return loaded
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def estimate(model, size="full", train_batch_size=None, wan_size="1.3B", extra_flags=()):
    """Peak bytes of ``model``'s trainer over two steps that update both adapters, with ``benchmark_step.py``'s
    flags (bf16, TF32, K = 4; for SDXL and Wan gradient checkpointing, for Wan ``--microbatch_size 1``, 8-bit Adam and
    UMT5 on the CPU) and ``extra_flags`` after them. Returns ``{"peak": bytes, "loaded": {class name: bytes}}``, the
    second the frozen networks on the GPU (base, VAE, text encoders, reward), which the peak includes."""
    family = "wan" if model == "wan_streaming" else model  # the streaming trainer runs on the Wan pipeline
    config = CONFIGS[family][size]
    if family == "wan" and size == "full" and wan_size == "14B":
        config = {**config, **CONFIGS["wan"]["full-14b"]}
    train_batch_size = train_batch_size or TRAIN_BATCH_SIZE[family]
    counter = LiveStorages()
    with tempfile.TemporaryDirectory() as folder:
        flags = build(family, config, size, folder, device=None)
        flags += [
            "--pretrained_model_name_or_path", os.path.join(folder, "model"), "--output_dir", os.path.join(folder, "o"),
            "--train_batch_size", str(train_batch_size), "--group_size", "4", "--lora_rank", str(LORA_RANK[family]),
            "--max_train_steps", "2", "--fake_update_ratio", "1", "--validation_steps", "1000",
            "--checkpointing_steps", "1000", "--report_to", "none", "--mixed_precision", "bf16", "--allow_tf32",
            *extra_flags,
        ]  # fmt: skip
        loaded = run_trainer(model, flags, FakeTensorMode(allow_non_fake_inputs=True), counter)
    return {"peak": counter.peak, "loaded": loaded}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*sorted(CONFIGS), "wan_streaming"], default="sdxl")
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--train_batch_size", type=int, default=None, help="Default: 4 (sdxl, wan), 32 (sit).")
    parser.add_argument("--wan_size", choices=["1.3B", "14B"], default="1.3B")
    args, extra_flags = parser.parse_known_args()
    result = estimate(args.model, args.size, args.train_batch_size, wan_size=args.wan_size, extra_flags=extra_flags)
    loaded = ", ".join(f"{name} {size / GIB:.2f}" for name, size in result["loaded"].items())
    print(f"peak {result['peak'] / GIB:.2f} GiB; frozen networks on the GPU (GiB): {loaded}")


if __name__ == "__main__":
    main()
