"""benchmarks/estimate_memory.py: the live-storage count against bytes counted by hand, fake weights against real
ones, and the estimate of a trainer's step on a tiny model."""

import contextlib
import sys

import pytest
import torch
from launch import REPO
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, f"{REPO}/benchmarks")
from estimate_memory import LiveStorages, estimate, fake_module  # noqa: E402


def test_live_storages_counts_what_is_alive_by_hand():
    # float32 throughout; every allocation is rounded up to 512 B.
    counter, mode = LiveStorages(), FakeTensorMode(allow_non_fake_inputs=True)
    with torch.device("meta"):
        layer = torch.nn.Linear(64, 32, bias=False).requires_grad_(False)
    fake_module(layer, mode)
    with mode, counter:
        counter.track(layer.weight)  # 32 x 64 x 4 = 8192
        x = torch.randn(16, 64)  # 4096
        view = x[:8]  # a view: its storage is x's, not counted again
        # y = x W^T (2048) lives until its square (2048) is made, then goes; the sum (4 bytes) takes 512.
        loss = layer(x).square().sum()
        assert counter.peak == 8192 + 4096 + 2048 + 2048 and counter.now == 8192 + 4096 + 512
        del x, view
        assert counter.now == 8192 + 512  # x freed with its last view
        assert counter.peak == 16384


def test_gradients_and_saved_activations_count_until_freed():
    counter, mode = LiveStorages(), FakeTensorMode(allow_non_fake_inputs=True)
    with torch.device("meta"):
        layer = torch.nn.Linear(64, 32, bias=False)
    fake_module(layer, mode)
    with mode, counter:
        counter.track(layer.weight)  # 8192
        x = torch.randn(16, 64)  # 4096, kept by the graph (mm saves it for the weight's gradient)
        loss = layer(x).sum()  # y 2048 (freed: sum saves no input), the sum 512
        del x
        assert counter.now == 8192 + 4096 + 512
        loss.backward()
        del loss  # the graph and x go; the gradient (8192) stays
        assert counter.now == 8192 + 8192
        layer.weight.grad = None
        assert counter.now == 8192


def test_fake_weights_count_as_real_ones():
    # The same forward and backward of a network, with real weights and with fake ones, allocate the same storages.
    from diffusers import UNet2DConditionModel

    config = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, cross_attention_dim=16,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4, norm_num_groups=8)  # fmt: skip
    peaks = {}
    for kind in ("real", "fake"):
        counter = LiveStorages()
        if kind == "real":
            unet, mode = UNet2DConditionModel(**config), None
        else:
            with torch.device("meta"):
                unet = UNet2DConditionModel(**config)
            mode = FakeTensorMode(allow_non_fake_inputs=True)
            fake_module(unet, mode)
        for param in unet.parameters():
            counter.track(param)
        with mode or contextlib.nullcontext(), counter:
            out = unet(torch.randn(2, 4, 8, 8), torch.tensor([1, 500]), torch.randn(2, 3, 16)).sample
            out.square().mean().backward()
        peaks[kind] = counter.peak
    assert peaks["fake"] == peaks["real"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("model", ["sit", "sdxl", "wan"])
def test_the_estimate_of_a_tiny_trainer_step(model):
    result = estimate(model, "tiny", train_batch_size=4)
    loaded = sum(result["loaded"].values())
    assert 0 < loaded < result["peak"] < 2**30
    if model == "wan":  # UMT5 stays on the CPU (--text_encoder_device cpu): not counted
        assert "UMT5EncoderModel" not in result["loaded"] and "WanTransformer3DModel" in result["loaded"]
