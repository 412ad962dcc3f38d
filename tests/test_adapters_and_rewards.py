import copy
import sys
import textwrap

import pytest
import torch
from diffusers import DiTTransformer2DModel
from tiny_models import tiny_dinov2_classifier
from transformers import Dinov2ForImageClassification

from amd_utils.lora import (
    ADAPTERS,
    FAKE,
    STUDENT,
    add_student_and_fake_adapters,
    load_lora_state_dict,
    lora_state_dict,
    merged_base_state_dict,
    use_adapter,
)
from amd_utils.rewards import load_reward

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "norm1.linear"]


def _tiny_dit():
    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=2, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6,
    ).eval()  # fmt: skip


def _call(model):
    gen = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(3, 1, 8, 8, generator=gen), torch.rand(3, generator=gen), torch.tensor([0, 4, 10])
    return model(x, timestep=t, class_labels=y).sample


@pytest.fixture
def two_adapters():
    model = _tiny_dit()
    base = copy.deepcopy(model)
    params = add_student_and_fake_adapters(model, TARGETS, rank=4)
    with torch.no_grad():  # B starts at 0; give both adapters weights so that they differ from the base
        for p in params[STUDENT] + params[FAKE]:
            p.normal_(0, 0.1)
    return model, base, params


def test_no_adapter_is_the_base_and_each_adapter_is_its_own(two_adapters):
    model, base, params = two_adapters
    use_adapter(model, None)
    assert torch.equal(_call(model), _call(base))
    use_adapter(model, STUDENT)
    student = _call(model)
    use_adapter(model, FAKE)
    fake = _call(model)
    assert not torch.allclose(student, fake) and not torch.allclose(student, _call(base))
    # switching never freezes an adapter: optimizers and DDP own both for the whole run
    assert all(p.requires_grad for name in ADAPTERS for p in params[name])
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_backward_reaches_only_the_active_adapter(two_adapters):
    model, _, params = two_adapters
    use_adapter(model, FAKE)
    _call(model).square().mean().backward()
    assert all(p.grad is None for p in params[STUDENT]) and all(p.grad is not None for p in params[FAKE])


def test_new_adapters_start_as_the_teacher():
    model, base = _tiny_dit(), _tiny_dit()
    add_student_and_fake_adapters(model, TARGETS, rank=4)
    for name in ADAPTERS:
        use_adapter(model, name)
        assert torch.equal(_call(model), _call(base))


def test_state_dict_round_trip_and_merge(two_adapters):
    model, base, _ = two_adapters
    use_adapter(model, STUDENT)
    student = _call(model)
    other = copy.deepcopy(base)
    add_student_and_fake_adapters(other, TARGETS, rank=4)
    load_lora_state_dict(other, STUDENT, lora_state_dict(model, STUDENT))
    use_adapter(other, STUDENT)
    assert torch.equal(_call(other), student)
    merged = DiTTransformer2DModel.from_config(model.config).eval()
    merged.load_state_dict(merged_base_state_dict(model, STUDENT), strict=True)
    torch.testing.assert_close(_call(merged), student, atol=1e-5, rtol=1e-5)
    use_adapter(model, None)  # merging left the model itself untouched
    assert torch.equal(_call(model), _call(base))


def test_dinov2_reward_is_the_target_class_log_probability(tmp_path):
    path = tiny_dinov2_classifier(tmp_path / "reward")
    reward = load_reward("dinov2", path)
    images = torch.rand(4, 1, 8, 8)
    labels = torch.tensor([0, 3, 3, 9])
    model = Dinov2ForImageClassification.from_pretrained(path).eval()
    with torch.no_grad():
        expected = model(pixel_values=(images - 0.5) / 0.5).logits.log_softmax(-1)[torch.arange(4), labels]
    torch.testing.assert_close(reward(images, labels), expected)
    # larger inputs are resized (shortest edge) and centre-cropped to the processor's 8 x 8
    assert reward(torch.rand(2, 1, 16, 20), torch.tensor([1, 2])).shape == (2,)


def test_user_reward_function(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            def brightness(images, conditions):
                return images.mean(dim=(1, 2, 3))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = load_reward("my_rewards:brightness")
    assert reward(torch.ones(2, 3, 4, 4), ["a", "b"]).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="has no function 'darkness'"):
        load_reward("my_rewards:darkness")
    sys.modules.pop("my_rewards", None)


@pytest.mark.parametrize(
    "name, path, message",
    [
        ("pickscore_v9", None, "unknown reward 'pickscore_v9'"),
        ("no_such_module:f", None, "cannot import the reward module 'no_such_module'"),
        ("dinov2", "/no/such/folder", "cannot load the DINOv2 reward '/no/such/folder'"),
    ],
)
def test_reward_errors_are_one_sentence(name, path, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=message):
        load_reward(name, path)
