"""Generation: prompts (+ images / videos) in, videos out.

Legend: B batch (prompts), T latent frames, h w latent height/width, z latent channels,
F H W pixel frames/height/width.

`Generator` loads the frozen text encoder, the VAE (with its latent statistics) and the DiT's EMA
weights from a workdir. Every mode is a `modes.Plan`; `Generator.sample(prompts, plan)` encodes
the plan's given frames (each run alone with the causal VAE, see `sora_jax/modes.py`), then runs
one jitted function per output shape and sampler: noise (or the noised input, SDEdit) -> sampler
(one `lax.scan`, classifier-free guidance batched into one forward, given frames restored after
every step) -> latents de-normalised -> VAE decode -> uint8 video.

The command line (`--mode=sample`) and the files each sample writes: sora_jax/sample_run.py.

Seeds: sample i of a call with ``seed`` draws its noise from ``jax.random.key(seed + i)``, so a
sample is reproduced alone with ``seed + i`` (its sidecar records that seed).
On a mesh with more than one device the batch is sharded over ('data', 'fsdp') (padded to a
multiple of their size) and the parameters by their logical axes (`sora_jax.parallel`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sora_jax import modes, parallel
from sora_jax.diffusion import flow, samplers
from sora_jax.models import dit as dit_lib
from sora_jax.models import vae as vae_lib
from sora_jax.train import caption_embedder, dit_task, vae_task
from sora_jax.train import state as state_lib

Embedder = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]  # texts -> ([B,L,D], [B,L])


def _creator(fn) -> types.SimpleNamespace:
    return types.SimpleNamespace(name="model", create_model=fn)


@dataclasses.dataclass
class Samples:
    """The result of `Generator.sample`."""

    videos: np.ndarray  # uint8 [B, F, H, W, 3], after the plan's trim
    latents: np.ndarray  # fp32 [B, T, h, w, z], normalised, before decoding
    given: np.ndarray  # fp32 [T, h, w, z] given latents (zeros where not given); [B, T, h, w, z]
    # when each prompt had its own plan
    mask: np.ndarray  # bool [T], True = given
    seeds: list[int]  # per-sample noise seeds


class Generator:
    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        *,
        mesh: Mesh | None = None,
        fresh_dit: bool = False,
    ):
        """Loads the trained stages of ``workdir`` (EMA weights) onto ``mesh`` (default: all).
        `fresh_dit`: a newly initialised DiT in place of the trained one, placed the same way, so
        its jitted functions are the trained one's programs (the `eval_compile` stage)."""
        vae_dir = dit_task.vae_workdir(config, workdir)
        dit_dir = os.path.join(workdir, "dit")
        # Checked here: the checkpoint manager would create the folders it looks into.
        needed = {"vae": vae_dir} if fresh_dit else {"vae": vae_dir, "dit": dit_dir}
        steps = {stage: _latest_step(stage_dir) for stage, stage_dir in needed.items()}
        for stage, stage_dir in needed.items():
            if steps[stage] is None:
                raise FileNotFoundError(
                    f"no checkpoint in {stage_dir}/checkpoints; train the {stage} stage first."
                )
        mesh = mesh or parallel.make_mesh(config.get("mesh", None) and config.mesh.to_dict())
        vae_cfg = vae_lib.VAEConfig(**config.vae.to_dict())
        dit_cfg = dit_lib.DiTConfig(**config.dit.to_dict())
        vae = state_lib.load_model(
            _creator(lambda rngs: vae_lib.CausalVAE(vae_cfg, rngs=rngs)),
            config.vae_train,
            vae_dir,
            mesh=mesh,
        )
        dit_creator = _creator(lambda rngs: dit_lib.DiT(dit_cfg, rngs=rngs))
        if fresh_dit:
            dit = state_lib.init_model(dit_creator, config.dit_train, mesh=mesh)
        else:
            dit = state_lib.load_model(dit_creator, config.dit_train, dit_dir, mesh=mesh)
        mean, std = vae_task.load_latent_stats(vae_dir)
        embedder = caption_embedder.CaptionEmbedder(config.text)
        self._setup(config, vae, dit, mean, std, embedder, mesh)
        self.checkpoint_steps = steps
        # Autoguidance's weaker models: earlier checkpoints of this DiT, loaded when first
        # asked for. A fresh DiT (eval_compile) guides itself: the same programs, no checkpoint.
        self._guide_loader = (
            (lambda step: self.dit)
            if fresh_dit
            else lambda step: state_lib.load_model(
                dit_creator, config.dit_train, dit_dir, mesh=mesh, step=step
            )
        )

    @classmethod
    def from_models(
        cls,
        config: ml_collections.ConfigDict,
        vae: vae_lib.CausalVAE,
        dit: dit_lib.DiT,
        latent_mean: np.ndarray,
        latent_std: np.ndarray,
        embedder: Embedder,
        *,
        mesh: Mesh | None = None,
    ) -> Generator:
        """A generator from models in memory (tests, notebooks); shards them when on a mesh."""
        gen = cls.__new__(cls)
        if mesh is not None and mesh.size > 1:
            dit = _on_mesh(dit, mesh, parallel.param_shardings)
            vae = _on_mesh(vae, mesh, lambda s, m: jax.tree.map(lambda _: _replicated(m), s))
        gen._setup(config, vae, dit, latent_mean, latent_std, embedder, mesh)
        return gen

    def _setup(self, config, vae, dit, mean, std, embedder, mesh) -> None:
        self.config = config
        self.vae, self.dit, self.embedder = vae, dit, embedder
        self.mesh = mesh if mesh is not None and mesh.size > 1 else None
        # The latents' (mean, std): arguments of the jitted functions, not constants baked into
        # them, so a program depends on their shapes only and stage dit_compile (an untrained
        # VAE's statistics) compiles the same training-sample program the DiT stage runs.
        self._stats = (jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))
        self._vae_def, self._vae_state = nnx.split(vae)
        self._dit_def, self._dit_state = nnx.split(dit)
        self.prediction = str(config.flow.get("prediction", "velocity"))
        self._runs: dict[tuple, Callable] = {}
        self._guides: dict[int, Any] = {}  # autoguidance: checkpoint step -> DiT state
        self._guide_loader: Callable[[int], dit_lib.DiT] | None = None
        # Threads share the jitted functions (the eval suite samples its sets concurrently):
        # concurrent first calls of one jitted function compile it once.
        self._runs_lock = threading.Lock()

        @jax.jit
        def encode(vae_state, stats, video):
            mean, _ = nnx.merge(self._vae_def, vae_state).encode(vae_lib.to_pixels(video))
            return (mean - stats[0]) / stats[1]

        @jax.jit
        def decode(vae_state, stats, z):
            vae = nnx.merge(self._vae_def, vae_state)
            return vae_lib.to_uint8(vae.decode(z * stats[1] + stats[0]))

        self._encode, self._decode = encode, decode

    def set_dit(self, dit: dit_lib.DiT) -> None:
        """Swaps in new DiT weights of the same shapes (e.g. the EMA during training); the
        compiled sampling functions are reused."""
        if self.mesh is not None:
            dit = _on_mesh(dit, self.mesh, parallel.param_shardings)
        self.dit = dit
        self._dit_state = nnx.state(dit)

    def add_guide(self, step: int, dit: dit_lib.DiT) -> None:
        """Registers `dit` (same shapes as the model) as the autoguidance guide of
        `autoguide_step=step` (generators built from models in memory have no checkpoints)."""
        if self.mesh is not None:
            dit = _on_mesh(dit, self.mesh, parallel.param_shardings)
        self._guides[int(step)] = nnx.state(dit)

    def _guide_state(self, step: int):
        with self._runs_lock:  # threads of the eval suite may ask for it at once
            if step not in self._guides:
                if self._guide_loader is None:
                    raise ValueError(f"autoguide_step={step}: no guide of that step; add one "
                                     "with add_guide (this generator has no workdir).")  # fmt: skip
                self._guides[step] = nnx.state(self._guide_loader(step))
            return self._guides[step]

    # ---- shapes, encode, decode ----

    @property
    def temporal_factor(self) -> int:
        return self.vae.temporal_factor

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(T, h, w, z) of a num_frames x height x width output."""
        return self.vae.latent_shape(num_frames, height, width)

    def encode(self, video: np.ndarray) -> np.ndarray:
        """uint8 [B, F, H, W, 3] -> normalised latents [B, T, h, w, z] (posterior mean)."""
        self.vae.latent_shape(*np.shape(video)[1:4])  # one sentence for a bad size
        return np.asarray(self._encode(self._vae_state, self._stats, jnp.asarray(video, jnp.uint8)))

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Normalised latents [B, T, h, w, z] -> uint8 [B, F, H, W, 3]."""
        z = jnp.asarray(latents, jnp.float32)
        return np.asarray(self._decode(self._vae_state, self._stats, z))

    # ---- sampling ----

    def _run_fn(self, steps: int, sampler: str, interval: tuple, cfg: bool, auto: bool):
        # start_t is traced (SDEdit strengths share one compile); t2v passes init = 0, start_t
        # = 1, and (1 - 1) * 0 + 1 * noise is the noise bit for bit.
        key = (steps, sampler, interval, cfg, auto)
        with self._runs_lock:
            if key not in self._runs:
                self._runs[key] = self._make_run(steps, sampler, interval, cfg, auto)
            return self._runs[key]

    def _make_run(self, steps: int, sampler: str, interval: tuple, cfg: bool, auto: bool):
        prediction = self.prediction

        def run(dit_state, vae_state, stats, noise, text, neg, given, given_mask, init, start_t,
                guidance, shift, guide_state, autoguidance):  # fmt: skip
            dit = nnx.merge(self._dit_def, dit_state)
            vae = nnx.merge(self._vae_def, vae_state)
            denoise = lambda x, t, c: dit(x, t, c["text"], c["mask"])
            guide = None
            if auto:
                weak = nnx.merge(self._dit_def, guide_state)
                guide = lambda x, t, c: weak(x, t, c["text"], c["mask"])
            x = flow.add_noise(init, noise, start_t)
            z = samplers.sample(
                denoise,
                x,
                text,
                uncond=neg if cfg else None,
                guidance=guidance,
                steps=steps,
                sampler=sampler,
                shift=shift,
                given=given,
                given_mask=given_mask,
                guidance_interval=interval,
                start_t=start_t,
                prediction=prediction,
                guide=guide,
                autoguidance=autoguidance if auto else 1.0,
            )
            video = vae.decode(z * stats[1] + stats[0])
            return z, vae_lib.to_uint8(video)

        return jax.jit(run)

    def _batch(self, arrays: dict, batch: int) -> dict:
        """Pads the batch to a multiple of the mesh's batch axes and shards it over them."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, arrays)
        dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        pad = -batch % dp

        def put(x):
            x = np.asarray(x)
            if pad:
                x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            return jax.device_put(x, parallel.batch_sharding(self.mesh, x.ndim))

        return jax.tree.map(put, arrays)

    def noise(self, seeds: Sequence[int], latent_shape: tuple[int, ...]) -> jax.Array:
        """[B, T, h, w, z] standard normal noise, sample i from ``jax.random.key(seeds[i])``."""
        draw = lambda s: jax.random.normal(jax.random.key(s), latent_shape, jnp.float32)
        return jnp.stack([draw(int(s)) for s in seeds])

    def sample(
        self,
        prompts: Sequence[str],
        plan: modes.Plan | Sequence[modes.Plan],
        *,
        steps: int = 30,
        guidance: float = 4.0,
        sampler: str = "euler",
        seed: int = 0,
        negative_prompt: str = "",
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        shift: float | None = None,
        autoguidance: float = 1.0,
        autoguide_step: int = 0,
        factorized: bool = False,
    ) -> Samples:
        """Samples ``plan`` once per prompt; deterministic for ``seed``. ``plan`` may also be a
        list of plans, one per prompt, alike but for their given pixels (`same_layout`: e.g.
        image -> video from several images in one call); ``Samples.given`` is then per prompt.

        Given latent frames come back bit-identical in ``Samples.latents``; a different seed
        changes only the generated frames. ``autoguidance`` > 1 guides the model away from
        its own DiT checkpoint of step ``autoguide_step`` (EMA weights; Karras et al. 2024),
        beside CFG's ``guidance`` (samplers.py has the formula).

        ``factorized`` (text -> video plans only): text -> image, then image -> video, as Emu
        Video factorises generation (Girdhar et al. 2023). Each prompt's first latent frame is
        sampled alone as an image (a 1-frame video, seed as the video's), then given to the
        video's sampling, which keeps it bit for bit: the whole trajectory sees a clean first
        frame, as in image -> video, instead of denoising it beside the rest. ``Samples.given``
        and ``mask`` stay the plan's (nothing given).
        """
        prompts = _check_prompts(prompts)
        plans = _check_plans(plan, len(prompts))
        per_prompt, plan = not isinstance(plan, modes.Plan), plans[0]
        lo, hi = check_settings(
            steps=steps,
            sampler=sampler,
            guidance_interval=guidance_interval,
            autoguidance=autoguidance,
            autoguide_step=autoguide_step,
            factorized=factorized,
        )
        if factorized and plan.mode != "t2v":
            raise ValueError(
                f"factorized sampling turns text -> video into text -> image -> video; the plan "
                f"is {plan.mode!r} (a video of > 1 frame with nothing given is needed)."
            )
        settings = dict(steps=steps, guidance=guidance, sampler=sampler, seed=seed,
                        negative_prompt=negative_prompt, guidance_interval=guidance_interval,
                        shift=shift, autoguidance=autoguidance,
                        autoguide_step=autoguide_step)  # fmt: skip
        first = None
        if factorized:
            image = modes.text_to_video(1, plan.height, plan.width, tf=self.temporal_factor)
            first = self.sample(prompts, image, **settings).latents[:, 0]
        auto = float(autoguidance) != 1.0
        guide_state = self._guide_state(int(autoguide_step)) if auto else None
        shape = self.latent_shape(plan.num_frames, plan.height, plan.width)
        b = len(prompts)
        tf = self.temporal_factor
        given, mask = modes.given_latents(plan, self.encode, shape, tf)
        if per_prompt:  # each prompt's given frames from its own plan (same slots)
            given = np.stack([given] + [modes.given_latents(p, self.encode, shape, tf)[0]
                                        for p in plans[1:]])  # fmt: skip
        text, text_mask = self.embedder(prompts)
        neg, neg_mask = self.embedder([negative_prompt] * b)
        seeds = [int(seed) + i for i in range(b)]
        given_b, mask_b = np.broadcast_to(given, (b, *shape)), np.broadcast_to(mask, (b, shape[0]))
        if first is not None:  # the sampled images are the given first latent frames
            given_b, mask_b = given_b.copy(), mask_b.copy()
            given_b[:, 0], mask_b[:, 0] = first, True
        args = {
            "noise": self.noise(seeds, shape),
            "text": {"text": text, "mask": text_mask},
            "neg": {"text": neg, "mask": neg_mask},
            "given": given_b,
            "given_mask": mask_b,
        }
        if plan.init is None:
            x0 = np.zeros(shape, np.float32)
        else:
            x0 = self.encode(np.stack([p.init for p in plans]))
        args["init"] = np.broadcast_to(x0, (b, *shape))
        args = self._batch(args, b)
        run = self._run_fn(steps, sampler, (lo, hi), float(guidance) != 1.0, auto)
        shift = self.config.flow.shift if shift is None else shift
        with contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh):
            z, video = run(
                self._dit_state,
                self._vae_state,
                self._stats,
                **args,
                start_t=jnp.float32(plan.start_t),
                guidance=jnp.float32(guidance),
                shift=jnp.float32(shift),
                guide_state=guide_state,
                autoguidance=jnp.float32(autoguidance),
            )
        video = _to_host(video)[:b]
        if plan.trim_frames:
            video = video[:, : video.shape[1] - plan.trim_frames]
        return Samples(video, _to_host(z)[:b], given, mask, seeds)

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
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        autoguidance: float = 1.0,
        autoguide_step: int = 0,
        factorized: bool = False,
    ) -> np.ndarray:
        """Text -> uint8 videos [B, F, H, W, 3] (F = 1: images); deterministic for `seed`.
        `factorized` (F > 1): text -> image -> video (`sample`)."""
        plan = modes.text_to_video(num_frames, height, width, tf=self.temporal_factor)
        return self.sample(
            prompts,
            plan,
            steps=steps,
            guidance=guidance,
            sampler=sampler,
            seed=seed,
            negative_prompt=negative_prompt,
            shift=shift,
            guidance_interval=guidance_interval,
            autoguidance=autoguidance,
            autoguide_step=autoguide_step,
            factorized=factorized and num_frames > 1,
        ).videos


def check_settings(
    *,
    steps: int,
    sampler: str,
    guidance_interval: Sequence[float],
    autoguidance: float = 1.0,
    autoguide_step: int = 0,
    factorized: bool = False,
    **_,
) -> tuple[float, float]:
    """Sampler settings checked before any weights load; returns the interval as floats."""
    if not isinstance(factorized, (bool, np.bool_)):
        raise ValueError(f"factorized must be True or False, got {factorized!r}.")
    if float(autoguidance) != 1.0 and not (isinstance(autoguide_step, int) and autoguide_step > 0):
        raise ValueError(
            f"autoguidance={autoguidance} needs autoguide_step, the step of the earlier DiT "
            f"checkpoint that guides, > 0; got {autoguide_step!r}."
        )
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}.")
    if sampler not in samplers.FLOW_SAMPLERS:
        raise ValueError(
            f"sampler must be one of {samplers.FLOW_SAMPLERS} for this rectified-flow model, "
            f"got {sampler!r}."
        )
    lo, hi = (float(v) for v in guidance_interval)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance_interval must be 0 <= lo <= hi <= 1, got {(lo, hi)}.")
    return lo, hi


def _latest_step(stage_dir: str) -> int | None:
    """The newest checkpoint step of a stage (Orbax names step folders by number)."""
    path = os.path.join(stage_dir, "checkpoints")
    steps = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
    return max(steps, default=None)


def same_layout(a: modes.Plan, b: modes.Plan) -> bool:
    """Whether two plans can share one sampling call: the same mode, size, given slots, start
    time and trim, with or without an init alike (their given pixels and inits may differ)."""
    return (a.mode, a.num_frames, a.height, a.width, tuple(a.slots), a.start_t, a.trim_frames,
            a.init is None) == (b.mode, b.num_frames, b.height, b.width, tuple(b.slots),
                                b.start_t, b.trim_frames, b.init is None)  # fmt: skip


def _check_plans(plan, n: int) -> list[modes.Plan]:
    """``plan`` for each of ``n`` prompts: one plan (shared) or a list of ``n`` `same_layout`
    plans."""
    if isinstance(plan, modes.Plan):
        return [plan]
    plans = list(plan)
    if len(plans) != n or not all(isinstance(p, modes.Plan) for p in plans):
        raise ValueError(f"plan must be one modes.Plan or a list of one per prompt ({n}), got "
                         f"{len(plans)} items.")  # fmt: skip
    for k, p in enumerate(plans[1:], 1):
        if not same_layout(plans[0], p):
            raise ValueError(
                f"plans of one call must differ only in their pixels: plan {k} ({p.mode}, "
                f"{p.num_frames}x{p.height}x{p.width}, slots {p.slots}, start_t {p.start_t}) is "
                f"not laid out as plan 0 ({plans[0].mode}, {plans[0].num_frames}x"
                f"{plans[0].height}x{plans[0].width}, slots {plans[0].slots}, start_t "
                f"{plans[0].start_t})."
            )
    return plans


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings.")
    return list(prompts)


def _to_host(x: jax.Array) -> np.ndarray:
    """The whole array on this host, also when its shards live on other processes."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _replicated(mesh: Mesh):
    return parallel.named_sharding(mesh, None)


def _on_mesh(model: nnx.Module, mesh: Mesh, shardings_fn) -> nnx.Module:
    graphdef, state = nnx.split(model)
    shardings = shardings_fn(state, mesh)
    with jax.set_mesh(mesh):
        state = jax.jit(lambda s: s, out_shardings=shardings)(state)
    return nnx.merge(graphdef, state)


def temporal_factor(config: ml_collections.ConfigDict) -> int:
    """The VAE's temporal compression from the config alone (before loading any weights)."""
    return 2 ** sum(bool(t) for t in config.vae.temporal_downsample)
