"""Per-frame conditioning masks: which latent frames are given (clean, t = 0, kept fixed).

Legend: B batch, T latent frames, H W latent height/width, C latent channels, K given frames.

One mechanism serves every conditioning mode of the Sora report (§"Prompting with images and
videos"): the DiT takes a time per latent frame, so a given frame is simply a frame whose
latent is the clean conditioning latent and whose time is 0. A mask is [B, T] bool,
True = the frame is given; the sampler never changes those frames, and the training loss
gives them weight 0.

Modes (the name of a training mode says *where the given frames are*):

  t2v / t2i      nothing given (t2i is a 1-frame video)
  i2v_head       the first frame given (animate an image forward)
  i2v_tail       the last frame given (a video that ends in the image)
  i2v both       first and last given (``i2v_mask(..., position='both')``)
  extend_head    a prefix of k frames given: the clip is extended forward in time
  extend_tail    a suffix of k frames given: the clip is extended backward in time
  connect        k head frames of one clip and k tail frames of another given, the
                 middle generated (the report's "connecting videos")
  loop           the first frame given and repeated as the last (seamless loop)
  infill         an arbitrary set of frame indices given

Only the masks live here; :func:`scatter_frames` places the conditioning latents at their
indices to make the ``given`` array that :func:`apply_condition` and the sampler use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

TRAINING_MODES = (
    "t2v",
    "i2v_head",
    "i2v_tail",
    "connect",
    "loop",
    "extend_head",
    "extend_tail",
    "infill",
)


def _check_frames(num_frames: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}.")


def t2v_mask(batch: int, num_frames: int) -> Array:
    """Nothing given: [B, T] all False."""
    _check_frames(num_frames)
    return jnp.zeros((batch, num_frames), bool)


def t2i_mask(batch: int) -> Array:
    """An image is a 1-frame video with nothing given: [B, 1] False."""
    return t2v_mask(batch, 1)


def infill_mask(batch: int, num_frames: int, given_indices: Sequence[int]) -> Array:
    """The frames at ``given_indices`` given (negative indices count from the end)."""
    _check_frames(num_frames)
    for i in given_indices:
        if not -num_frames <= i < num_frames:
            raise ValueError(f"given index {i} is outside the {num_frames} latent frames.")
    idx = jnp.asarray([i % num_frames for i in given_indices], jnp.int32)
    row = jnp.zeros((num_frames,), bool).at[idx].set(True)
    return jnp.broadcast_to(row, (batch, num_frames))


def i2v_mask(batch: int, num_frames: int, *, position: str = "head") -> Array:
    """Image-to-video: the first ('head'), last ('tail') or both ('both') frames given."""
    indices = {"head": [0], "tail": [-1], "both": [0, -1]}.get(position)
    if indices is None:
        raise ValueError(f"i2v position must be 'head', 'tail' or 'both', got {position!r}.")
    return infill_mask(batch, num_frames, indices)


def extend_mask(
    batch: int, num_frames: int, num_existing: int, *, direction: str = "forward"
) -> Array:
    """Extend a clip of ``num_existing`` latent frames by ``num_frames - num_existing``.

    'forward' continues the clip in time (the existing frames are the head), 'backward'
    prepends to it (the existing frames are the tail).
    """
    if not 0 <= num_existing <= num_frames:
        raise ValueError(f"num_existing must be in [0, {num_frames}], got {num_existing}.")
    if direction == "forward":
        return infill_mask(batch, num_frames, list(range(num_existing)))
    if direction == "backward":
        return infill_mask(batch, num_frames, list(range(num_frames - num_existing, num_frames)))
    raise ValueError(f"extend direction must be 'forward' or 'backward', got {direction!r}.")


def connect_mask(batch: int, num_frames: int, k: int) -> Array:
    """The first k and the last k frames given (two clips joined by a generated middle)."""
    if not 1 <= 2 * k <= num_frames:
        raise ValueError(f"connect needs 1 <= 2 * k <= num_frames={num_frames}, got k={k}.")
    return infill_mask(batch, num_frames, list(range(k)) + list(range(num_frames - k, num_frames)))


def loop_mask(batch: int, num_frames: int) -> Array:
    """First and last frames given; fill the last with the first via :func:`loop_given`."""
    return infill_mask(batch, num_frames, [0, -1])


def scatter_frames(frames: Array, indices: Sequence[int], num_frames: int) -> Array:
    """Place K conditioning latents [B, K, H, W, C] at ``indices`` of a zero [B, T, H, W, C].

    E.g. extend forward: ``scatter_frames(existing, range(K), T)`` with
    ``extend_mask(B, T, K)``.
    """
    if frames.shape[1] != len(indices):
        raise ValueError(f"got {frames.shape[1]} frames for {len(indices)} indices.")
    idx = jnp.asarray([i % num_frames for i in indices], jnp.int32)
    out = jnp.zeros((frames.shape[0], num_frames, *frames.shape[2:]), frames.dtype)
    return out.at[:, idx].set(frames)


def loop_given(first: Array, num_frames: int) -> tuple[Array, Array]:
    """(given [B, T, H, W, C], mask [B, T]) for a loop: ``first`` [B, 1, H, W, C] at both ends."""
    if num_frames < 2:
        raise ValueError(f"a loop needs at least 2 latent frames, got {num_frames}.")
    given = scatter_frames(jnp.concatenate([first, first], axis=1), [0, -1], num_frames)
    return given, loop_mask(first.shape[0], num_frames)


def apply_condition(x: Array, t: Array, given_latents: Array, mask: Array) -> tuple[Array, Array]:
    """Replace the given frames of x by ``given_latents`` and set their time to 0.

    Args:
      x: [B, T, H, W, C] noisy latents.
      t: [B, T] times.
      given_latents: [B, T, H, W, C]; only the frames where ``mask`` is True are read.
      mask: [B, T] bool.

    Returns:
      (x, t) with the given frames clean and at t = 0.
    """
    if mask.shape != x.shape[:2] or t.shape != x.shape[:2]:
        raise ValueError(f"mask {mask.shape} and t {t.shape} must both be [B, T] = {x.shape[:2]}.")
    m = mask.reshape(mask.shape + (1,) * (x.ndim - 2))
    return jnp.where(m, given_latents.astype(x.dtype), x), jnp.where(mask, 0.0, t).astype(t.dtype)


def _mode_masks(rng: Array, batch: int, num_frames: int) -> dict[str, Array]:
    """One [B, T] mask per training mode, with random k / index sets drawn per sample."""
    r_ext, r_con, r_inf = jax.random.split(rng, 3)
    idx = jnp.arange(num_frames)[None, :]
    last = num_frames - 1
    # k in [1, T-1] for extensions and [1, (T-1)//2] for connect: at least one frame to generate.
    k_ext = jax.random.randint(r_ext, (batch, 1), 1, max(num_frames, 2))
    k_con = jax.random.randint(r_con, (batch, 1), 1, max((num_frames - 1) // 2, 1) + 1)
    ends = (idx == 0) | (idx == last)
    full = (batch, num_frames)
    return {
        "t2v": jnp.zeros(full, bool),
        "i2v_head": jnp.broadcast_to(idx == 0, full),
        "i2v_tail": jnp.broadcast_to(idx == last, full),
        "connect": (idx < k_con) | (idx > last - k_con),
        "loop": jnp.broadcast_to(ends, full),
        "extend_head": idx < k_ext,
        "extend_tail": idx > last - k_ext,
        "infill": jax.random.bernoulli(r_inf, 0.5, full),
    }


def sample_training_masks(
    rng: Array, batch: int, num_frames: int, mixture: Mapping[str, float]
) -> Array:
    """Draw one conditioning mode per sample from ``mixture`` and return its mask [B, T] bool.

    ``mixture`` maps mode names (:data:`TRAINING_MODES`) to unnormalised probabilities; it
    is static (bind it with ``functools.partial`` before ``jax.jit``). A draw that would give
    every frame (e.g. any mode on a 1-frame image) falls back to t2v, since with nothing left
    to generate the sample would carry no loss.
    """
    _check_frames(num_frames)
    unknown = sorted(set(mixture) - set(TRAINING_MODES))
    if unknown:
        raise ValueError(
            f"unknown conditioning modes {unknown}; expected names from {TRAINING_MODES}."
        )
    probs = [float(p) for p in mixture.values()]
    if any(p < 0 for p in probs) or sum(probs) <= 0:
        raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {dict(mixture)}.")
    r_mode, r_masks = jax.random.split(rng)
    logits = jnp.log(jnp.asarray(probs, jnp.float32))
    mode = jax.random.categorical(r_mode, logits, shape=(batch,))
    all_masks = _mode_masks(r_masks, batch, num_frames)
    stacked = jnp.stack([all_masks[name] for name in mixture])  # [M, B, T]
    mask = stacked[mode, jnp.arange(batch)]
    return mask & ~jnp.all(mask, axis=1, keepdims=True)
