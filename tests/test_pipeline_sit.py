"""The SiT pipeline's stochastic (few-step) sampling draws all its noise from ``generator``, in every diffusers
version: a sample depends on its own generator only, not on the batch or the global RNG."""

import diffusers
import pytest
import torch
from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler
from packaging.version import Version

from amd_utils.pipeline_sit import SiTPipeline

SIGMAS = [1.0, 0.75, 0.5, 0.25]


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=1, num_layers=1, sample_size=8,
        patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6,
    )  # fmt: skip
    with torch.no_grad():  # DiT zero-initializes its modulations: random ones make the output depend on t and c
        for name, parameter in transformer.named_parameters():
            if "norm1.linear" in name or "proj_out" in name:
                parameter.normal_(0, 0.05)
    transformer.eval()  # as from_pretrained leaves it: no class dropout
    pipe = SiTPipeline(transformer, FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), default_sigmas=SIGMAS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, labels, seeds, global_seed):
    torch.manual_seed(global_seed)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return pipe(class_labels=labels, generator=generators, output_type="pt").images


def test_a_sample_depends_on_its_own_generator_only(student):
    # Another batch and another global seed: the same sample. (Before diffusers 0.39 the scheduler drew the
    # re-noising from the global RNG, so a sample depended on both.)
    batch = sample(student, [3, 7], [11, 12], global_seed=0)
    alone = sample(student, [7], [12], global_seed=1)
    torch.testing.assert_close(batch[1:], alone, rtol=0, atol=1e-6)
    before = torch.get_rng_state()
    student(class_labels=[3], generator=torch.Generator().manual_seed(11), output_type="pt")
    assert torch.equal(torch.get_rng_state(), before)  # nothing drawn from the global RNG


@pytest.mark.skipif(Version(diffusers.__version__) < Version("0.39"), reason="the scheduler ignores generator")
@torch.no_grad()
def test_the_stochastic_step_is_the_schedulers_own(student):
    # From diffusers 0.39 on, the scheduler's stochastic step takes the generator: the pipeline gives its result.
    scheduler = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    scheduler.set_timesteps(sigmas=SIGMAS)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1, 1, 8, 8, generator=generator)
    labels = torch.tensor([5])
    for i, timestep in enumerate(scheduler.timesteps):  # SiT time t = 1 - sigma; SiT's velocity is x0 - noise
        velocity = student.transformer(x, timestep=(1 - scheduler.sigmas[i]).expand(1), class_labels=labels).sample
        x = scheduler.step(-velocity, timestep, x, generator=generator).prev_sample
    ours = student(class_labels=[5], generator=torch.Generator().manual_seed(4), output_type="pt").images
    assert torch.equal(ours, (x / 2 + 0.5).clamp(0, 1))
