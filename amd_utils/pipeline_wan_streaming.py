"""Streaming (block-causal) text-to-video with diffusers' ``WanTransformer3DModel``: the causal student of
Self-Forcing (Huang et al., 2025) and LongLive (Yang et al., 2025) without a fork of the model.

A video is generated block by block (``num_frame_per_block`` latent frames). Each block is denoised in the
student's few steps; a last pass at noise level 0 then writes that block's clean keys and values into a cache,
which the next blocks attend to. A block's queries see the ``sink_size`` first frames of the video plus the newest
``local_attn_size - sink_size`` frames, their own block included (``local_attn_size`` -1: every earlier frame).
Rotary embeddings use each frame's absolute index, so the sink frames keep positions 0, 1, 2 however long the video
grows (LongLive's frame sink, NVlabs/LongLive aa416f08 ``wan/modules/causal_model.py``). Old frames leave the cache
as the window moves, so a video of any length takes constant memory.

Two hooks do it, both on the stock model: an attention processor on every block's self-attention (``attn1``) and a
forward hook on the rotary embedding that shifts it by the first frame's index. With no block in progress both step
aside and the model is the stock bidirectional one.

This file depends on torch and diffusers only: ``train_amd_wan_streaming.py`` copies it into its output folder as
``pipeline.py``, so that stock diffusers loads a base Wan pipeline with this class:

    pipe = DiffusionPipeline.from_pretrained(base, custom_pipeline=output_dir, trust_remote_code=True)
"""

import contextlib

import torch
import torch.nn.functional as F
from diffusers import WanPipeline
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

NUM_TRAIN_TIMESTEPS = 1000  # Wan's timestep is sigma * 1000


def visible_frames(start, end, local_attn_size, sink_size):
    """The frames before ``start`` that the queries of the block ``[start, end)`` attend to, besides the block
    itself: the sink frames and the newest of the window (LongLive: the window ``local_attn_size`` counts the
    sink and ends with the block)."""
    if local_attn_size == -1:
        return range(start)
    window_start = max(sink_size, end - (local_attn_size - sink_size))
    return [f for f in range(start) if f < sink_size or f >= window_start]


def block_causal_mask(num_frames, num_frame_per_block, local_attn_size, sink_size):
    """(num_frames, num_frames) booleans, True where a query frame (row) attends to a key frame (column): what
    generating block by block with the cache computes, as one mask over the whole clip."""
    mask = torch.zeros(num_frames, num_frames, dtype=torch.bool)
    for start in range(0, num_frames, num_frame_per_block):
        end = min(start + num_frame_per_block, num_frames)
        mask[start:end, start:end] = True
        mask[start:end, list(visible_frames(start, end, local_attn_size, sink_size))] = True
    return mask


class StreamState:
    """What the hooks of one transformer share: the window, the frame the current input starts at (None: the stock
    bidirectional model), whether this pass writes its keys and values into the cache, and the cache itself, one
    ``{frame: (keys, values)}`` per layer. Cache dicts are replaced, never changed in place, so that
    :meth:`snapshot` is a list of references."""

    def __init__(self, num_layers, local_attn_size=-1, sink_size=0):
        self.local_attn_size, self.sink_size = local_attn_size, sink_size
        self.start_frame, self.write, self.num_frame_per_block = None, False, None
        self.tokens_per_frame = None
        self.cache = [{} for _ in range(num_layers)]

    def reset(self):
        self.cache = [{} for _ in self.cache]

    def snapshot(self):
        return list(self.cache)

    def restore(self, snapshot, rows=slice(None)):
        """The cache as :meth:`snapshot` took it, keeping the batch rows ``rows`` (a microbatch)."""
        self.cache = [{f: (k[rows], v[rows]) for f, (k, v) in layer.items()} for layer in snapshot]

    def block(self, start_frame, write=False):
        """Context: the next forwards take frames from ``start_frame`` on, seeing the cache (and writing to it)."""
        return self._setting(start_frame=start_frame, write=write)

    def one_pass(self, num_frame_per_block):
        """Context: the next forwards take a whole clip from frame 0 under :func:`block_causal_mask`, no cache."""
        return self._setting(start_frame=0, num_frame_per_block=num_frame_per_block)

    @contextlib.contextmanager
    def _setting(self, **values):
        saved = {name: getattr(self, name) for name in values}
        self.__dict__.update(values)
        try:
            yield
        finally:
            self.__dict__.update(saved)


def rotate(x, rotary_emb):
    """Apply the rotary embedding ``WanTransformer3DModel.rope`` returns to ``x`` (B, S, heads, head_dim), as the
    stock processor does: diffusers >= 0.35 gives (cos, sin) of shape (1, S, 1, D); 0.34 complex (1, 1, S, D/2)."""
    if isinstance(rotary_emb, tuple):
        cos, sin = rotary_emb
        x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
        out = torch.empty_like(x)
        out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
        out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
        return out.type_as(x)
    rotated = torch.view_as_complex(x.to(torch.float64).unflatten(-1, (-1, 2))) * rotary_emb.transpose(1, 2)
    return torch.view_as_real(rotated).flatten(-2).type_as(x)


class StreamingSelfAttention:
    """The processor of one block's ``attn1``: the stock one when no block is in progress; otherwise attention
    over the visible cached frames and the current input, whose keys and values it caches when the state says so."""

    def __init__(self, stock, state, layer):
        self.stock, self.state, self.layer = stock, state, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        state = self.state
        if state.start_frame is None:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query = rotate(attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1)), rotary_emb)
        key = rotate(attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1)), rotary_emb)
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        tokens, start = state.tokens_per_frame, state.start_frame
        num_frames = hidden_states.shape[1] // tokens
        mask = None
        if state.num_frame_per_block is not None:  # one pass over the clip under the block-causal mask
            mask = block_causal_mask(num_frames, state.num_frame_per_block, state.local_attn_size, state.sink_size)
            mask = mask.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1).to(query.device)
            keys, values = key, value
        else:
            cache = state.cache[self.layer]
            end = start + num_frames
            seen = [cache[f] for f in visible_frames(start, end, state.local_attn_size, state.sink_size)]
            keys = torch.cat([k for k, _ in seen] + [key], dim=1)
            values = torch.cat([v for _, v in seen] + [value], dim=1)
            if state.write:  # keep what a later block may still see
                keep = visible_frames(end, end + 1, state.local_attn_size, state.sink_size)
                new = {start + i: (k, v) for i, (k, v) in enumerate(zip(key.split(tokens, 1), value.split(tokens, 1)))}
                state.cache[self.layer] = {f: kv for f, kv in {**cache, **new}.items() if f in keep or f >= end}
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), attn_mask=mask
        )
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def _shift_rope(state):
    def hook(rope, args, output):
        if state.start_frame is None:
            return output
        batch, channels, frames, height, width = args[0].shape
        p_t, p_h, p_w = rope.patch_size
        state.tokens_per_frame = (height // p_h) * (width // p_w)
        if state.start_frame == 0:
            return output
        # The table for frames [0, start + frames) (a zero-stride input: only its shape is read), then its tail.
        longer = args[0].new_zeros(()).expand(batch, channels, frames + state.start_frame * p_t, height, width)
        full = rope.forward(longer)
        count = frames // p_t * state.tokens_per_frame
        if isinstance(full, tuple):  # diffusers >= 0.35: (cos, sin), tokens on dim 1
            return tuple(t[:, -count:] for t in full)
        return full[:, :, -count:]  # 0.34: complex, tokens on dim 2

    return hook


def make_streaming(transformer, local_attn_size=-1, sink_size=0):
    """Install the hooks on ``transformer`` (once; a second call only changes the window) and return its
    :class:`StreamState`."""
    state = getattr(transformer, "stream_state", None)
    if state is None:
        state = StreamState(len(transformer.blocks))
        for layer, block in enumerate(transformer.blocks):
            block.attn1.set_processor(StreamingSelfAttention(block.attn1.processor, state, layer))
        transformer.rope.register_forward_hook(_shift_rope(state))
        transformer.stream_state = state
    state.local_attn_size, state.sink_size = local_attn_size, sink_size
    return state


def predict_x0(transformer, state, x, sigma, prompt_embeds, start_frame, write=False):
    """Clean estimate ``x - sigma v`` (float32) of the frames of ``x`` (B, C, frames, h, w) that start at
    ``start_frame``, at noise level ``sigma`` (a float or (B,) tensor)."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).expand(len(x))
    with state.block(start_frame, write):
        velocity = transformer(
            x.to(prompt_embeds.dtype), timestep=sigma * NUM_TRAIN_TIMESTEPS, encoder_hidden_states=prompt_embeds
        ).sample
    return x.float() - sigma.view(-1, 1, 1, 1, 1) * velocity.float()


@torch.no_grad()
def stream_video(transformer, state, noise, prompt_embeds, sigmas, num_frame_per_block, exit_step=None,
                 generator=None):  # fmt: skip
    """Generate the video whose initial noise is ``noise`` (B, C, latent frames, h, w), block by block: each block
    runs the student's steps at noise levels ``sigmas[0..]`` (predict x0, re-noise it with fresh noise to the next
    level) up to ``exit_step`` (default: the last step), then a pass at level 0 writes its clean keys and values
    into the cache. Self-Forcing's rollout (guandeh17/Self-Forcing 33593df ``pipeline/self_forcing_training.py``)
    with one exit step for every block.

    Returns the clean video (float32) and, per block, ``(start_frame, input, cache snapshot)`` of its exit step:
    what a pass with grad needs to recompute that step exactly."""
    exit_step = len(sigmas) - 2 if exit_step is None else exit_step
    state.reset()
    videos, exits = [], []
    for start in range(0, noise.shape[2], num_frame_per_block):
        x = noise[:, :, start : start + num_frame_per_block]
        for step in range(exit_step + 1):
            x0 = predict_x0(transformer, state, x, sigmas[step], prompt_embeds, start)
            if step < exit_step:
                fresh = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                x = (1 - sigmas[step + 1]) * x0 + sigmas[step + 1] * fresh
        exits.append((start, x, state.snapshot()))
        videos.append(x0)
        predict_x0(transformer, state, x0, 0.0, prompt_embeds, start, write=True)
    state.reset()
    return torch.cat(videos, dim=2), exits


class WanStreamingPipeline(WanPipeline):
    """WanPipeline's components and prompt encoding; sampling streams the video block by block with a rolling
    cache (:func:`stream_video`), so ``num_frames`` may exceed what the student was trained on. The noise levels
    are the scheduler's (load the student's ``scheduler/``); ``guidance_scale`` is not offered (a distilled
    student samples without it)."""

    @torch.no_grad()
    def __call__(
        self,
        prompt,
        height=480,
        width=832,
        num_frames=81,
        num_inference_steps=4,
        num_frame_per_block=3,
        local_attn_size=12,
        sink_size=3,
        generator=None,
        output_type="np",
        max_sequence_length=512,
        return_dict=True,
    ):
        """``num_frames`` video frames (4k + 1, whose (k + 1) latent frames are a multiple of
        ``num_frame_per_block``); ``output_type`` "np", "pil", "pt" or "latent"."""
        device = self._execution_device
        prompt_embeds, _ = self.encode_prompt(
            prompt, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length, device=device,
            dtype=self.transformer.dtype,
        )  # fmt: skip
        latent_frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        if latent_frames % num_frame_per_block:
            raise ValueError(
                f"num_frames {num_frames} gives {latent_frames} latent frames, not a multiple of num_frame_per_block "
                f"{num_frame_per_block}: choose num_frames = 4 * ({num_frame_per_block} * n) - 3."
            )
        shape = (
            len(prompt_embeds), self.transformer.config.in_channels, latent_frames,
            height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial,
        )  # fmt: skip
        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        state = make_streaming(self.transformer, local_attn_size, sink_size)
        latents, _ = stream_video(
            self.transformer, state, noise, prompt_embeds, self.scheduler.sigmas, num_frame_per_block,
            generator=generator,
        )  # fmt: skip
        if output_type == "latent":
            video = latents
        else:
            mean = torch.tensor(self.vae.config.latents_mean).view(1, -1, 1, 1, 1).to(device)
            std = torch.tensor(self.vae.config.latents_std).view(1, -1, 1, 1, 1).to(device)
            video = self.vae.decode((latents * std + mean).to(self.vae.dtype)).sample
            video = self.video_processor.postprocess_video(video, output_type=output_type)
        self.maybe_free_model_hooks()
        return WanPipelineOutput(frames=video) if return_dict else (video,)
