"""Generation: prompts in, videos out.

`Generator` loads the frozen text encoder, the VAE (with its latent statistics) and the DiT's EMA
weights from a workdir and runs one jitted function per output shape: noise grid of the
requested size -> sampler (one `lax.scan`, classifier-free guidance batched into one forward) ->
latents de-normalised -> VAE decode -> uint8 video.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import types
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax.data import video_io
from sora_jax.diffusion import samplers
from sora_jax.models import dit as dit_lib
from sora_jax.models import vae as vae_lib
from sora_jax.train import dit_task, loop, vae_task


def _creator(fn) -> types.SimpleNamespace:
    return types.SimpleNamespace(name="model", create_model=fn)


class Generator:
    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        vae_dir = dit_task.vae_workdir(config, workdir)
        vae_cfg = vae_lib.VAEConfig(**config.vae.to_dict())
        dit_cfg = dit_lib.DiTConfig(**config.dit.to_dict())
        self.vae = loop.load_model(
            _creator(lambda rngs: vae_lib.CausalVAE(vae_cfg, rngs=rngs)), config.vae_train, vae_dir
        )
        self.dit = loop.load_model(
            _creator(lambda rngs: dit_lib.DiT(dit_cfg, rngs=rngs)),
            config.dit_train,
            os.path.join(workdir, "dit"),
        )
        mean, std = vae_task.load_latent_stats(vae_dir)
        self.latent_mean, self.latent_std = jnp.asarray(mean), jnp.asarray(std)
        self.embedder = dit_task.CaptionEmbedder(config.text)
        self._vae_def, self._vae_state = nnx.split(self.vae)
        self._dit_def, self._dit_state = nnx.split(self.dit)

    @functools.partial(jax.jit, static_argnums=(0,), static_argnames=("steps", "sampler"))
    def _run(
        self,
        dit_state,
        vae_state,
        noise,
        text,
        mask,
        neg_text,
        neg_mask,
        guidance,
        shift,
        *,
        steps: int,
        sampler: str,
    ):
        dit = nnx.merge(self._dit_def, dit_state)
        vae = nnx.merge(self._vae_def, vae_state)

        def denoise(x, t, cond):
            return dit(x, t, cond["text"], cond["mask"])

        z = samplers.sample(
            denoise,
            noise,
            {"text": text, "mask": mask},
            uncond={"text": neg_text, "mask": neg_mask},
            guidance=guidance,
            steps=steps,
            sampler=sampler,
            shift=shift,
        )
        video = vae.decode(z * self.latent_std + self.latent_mean)
        return vae_task.to_uint8(video)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        num_frames: int,
        height: int,
        width: int,
        steps: int = 30,
        guidance: float = 4.0,
        sampler: str = "euler",
        seed: int = 0,
        negative_prompt: str = "",
        shift: float | None = None,
    ) -> np.ndarray:
        """uint8 videos [B, F, H, W, 3] for `prompts`; deterministic for `seed`."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a list of strings.")
        t_lat, h_lat, w_lat, z = self.vae.latent_shape(num_frames, height, width)
        noise = jax.random.normal(
            jax.random.key(seed), (len(prompts), t_lat, h_lat, w_lat, z), jnp.float32
        )
        text, mask = self.embedder(list(prompts))
        neg_text, neg_mask = self.embedder([negative_prompt] * len(prompts))
        shift = self.config.flow.shift if shift is None else shift
        out = self._run(
            self._dit_state,
            self._vae_state,
            noise,
            text,
            mask,
            neg_text,
            neg_mask,
            jnp.float32(guidance),
            jnp.float32(shift),
            steps=steps,
            sampler=sampler,
        )
        return np.asarray(out)


def save_video(path_stem: str, video: np.ndarray, fps: int, meta: dict | None = None) -> dict:
    """Writes `<stem>.mp4`, `<stem>.gif` (and `<stem>.png` for 1 frame) plus a JSON sidecar."""
    os.makedirs(os.path.dirname(path_stem) or ".", exist_ok=True)
    paths = {"mp4": path_stem + ".mp4", "gif": path_stem + ".gif"}
    video_io.write_mp4(paths["mp4"], video, fps)
    video_io.write_gif(paths["gif"], video, fps)
    if video.shape[0] == 1:
        paths["png"] = path_stem + ".png"
        video_io.write_png(paths["png"], video[0])
    if meta is not None:
        with open(path_stem + ".json", "w") as f:
            json.dump({**meta, "files": paths}, f, indent=1)
    logging.info("wrote %s", paths["mp4"])
    return paths
