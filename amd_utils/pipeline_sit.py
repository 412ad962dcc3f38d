"""Class-conditional sampling for SiT-style flow models stored as diffusers' ``DiTTransformer2DModel``.

This file depends on diffusers and torch only: ``train_amd_sit.py`` copies it into every output folder
and names it in ``model_index.json``, so stock diffusers loads the result with

    pipe = DiffusionPipeline.from_pretrained(output_dir, trust_remote_code=True)
    images = pipe(class_labels=[207, 360]).images

SiT's conventions (Ma et al., 2024): ``x_t = t * x0 + (1 - t) * noise`` with t = 1 clean, the network
predicts the velocity ``x0 - noise`` and embeds t in [0, 1] with DiT's sinusoid. The pipeline drives
diffusers' ``FlowMatchEulerDiscreteScheduler`` (sigma = 1 - t, velocity ``noise - x0``): deterministic
Euler for a multi-step teacher, ``stochastic_sampling=True`` (predict x0, re-noise with fresh noise from the
``generator``, in every diffusers version) for a few-step student, whose noise levels are stored in the
pipeline's config as ``default_sigmas``.
"""

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.models.embeddings import Timesteps
from diffusers.utils.torch_utils import randn_tensor


def use_sit_time_embedding(transformer):
    """Make diffusers' DiT embed time as SiT and DiT do.

    The original networks use frequencies ``10000 ** (-i / half)``; diffusers' DiT builds its time
    projections with ``downscale_freq_shift=1``, i.e. ``10000 ** (-i / (half - 1))``, which no weight
    conversion can undo. Setting the shift to 0 on every time projection makes the outputs match the
    original network exactly. Not stored in the model config: call this after every load.
    """
    for module in transformer.modules():
        if isinstance(module, Timesteps):
            module.downscale_freq_shift = 0
    return transformer


class SiTPipeline(DiffusionPipeline):
    """Samples class-conditional images from a SiT/DiT flow transformer, in pixel or VAE latent space."""

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]

    def __init__(self, transformer, scheduler, vae=None, default_sigmas=None):
        super().__init__()
        use_sit_time_embedding(transformer)
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        self.register_to_config(default_sigmas=default_sigmas)

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        num_inference_steps=None,
        sigmas=None,
        guidance_scale=1.0,
        generator=None,
        output_type="pil",
        return_dict=True,
    ):
        """``class_labels``: ints (one image each). Steps: ``sigmas`` if given, else ``num_inference_steps``
        evenly spaced, else the pipeline's ``default_sigmas`` (a distilled student), else 50.
        ``guidance_scale``: standard CFG ``uncond + w (cond - uncond)`` with the null class; 1 disables it.
        ``output_type``: "pil", "np" (images in [0, 1]) or "pt" ([0, 1] tensors)."""
        device = self._execution_device
        config = self.transformer.config
        labels = torch.as_tensor(class_labels, device=device).reshape(-1)
        if sigmas is None and num_inference_steps is None:
            sigmas = self.config.default_sigmas
        if sigmas is not None:
            self.scheduler.set_timesteps(sigmas=list(sigmas), device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps or 50, device=device)

        shape = (len(labels), config.in_channels, config.sample_size, config.sample_size)
        sample = randn_tensor(shape, generator=generator, device=device, dtype=self.transformer.dtype)
        guided = guidance_scale != 1.0
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, config.num_embeds_ada_norm)])  # null class last
        for i, timestep in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = torch.cat([sample, sample]) if guided else sample
            sit_time = (1.0 - self.scheduler.sigmas[i]).to(device=device, dtype=self.transformer.dtype)
            velocity = self.transformer(
                model_input, timestep=sit_time.expand(len(model_input)), class_labels=labels
            ).sample
            velocity = velocity[:, : config.in_channels]  # learned-sigma channels, if any, are unused
            if guided:
                cond, uncond = velocity.chunk(2)
                velocity = uncond + guidance_scale * (cond - uncond)
            if self.scheduler.config.stochastic_sampling:
                # The scheduler's stochastic step (predict x0, re-noise it to the next level), with the noise drawn
                # from ``generator``: before diffusers 0.39 the scheduler drew it from the global RNG instead.
                sigma, next_sigma = self.scheduler.sigmas[i], self.scheduler.sigmas[i + 1]
                x0 = sample.float() + sigma * velocity
                noise = randn_tensor(sample.shape, generator=generator, device=device, dtype=torch.float32)
                sample = ((1.0 - next_sigma) * x0 + next_sigma * noise).to(velocity.dtype)
            else:  # SiT's velocity is x0 - noise; the scheduler's is noise - x0.
                sample = self.scheduler.step(-velocity, timestep, sample, generator=generator).prev_sample

        if self.vae is not None:
            sample = self.vae.decode(sample.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        images = (sample.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            result = images
        else:
            result = images.permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "pil":
                result = self.numpy_to_pil(result)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)
