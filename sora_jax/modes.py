"""Every generation mode as one plan: which latent frames are given, and the pixels they come from.

Legend: F pixel frames, T latent frames, H W pixel height/width, h w latent height/width,
z latent channels, tf the VAE's temporal factor (4 by default).

The DiT denoises latent frames; a given latent frame is clean (t = 0) and is restored after every
solver step (``diffusion/conditioning.py``, ``diffusion/samplers.py``). So every mode of the Sora
report is a :class:`Plan`: a pixel *canvas* of the output's length holding the known frames, the
set of latent *slots* that are given, and for video->video editing an input to noise.

Frame arithmetic of the causal VAE (F = 1 + tf (T - 1)):

  slot 0        pixel frame 0 alone (the "image latent": a causal encoder sees only frame 0)
  slot j >= 1   pixel frames tf (j - 1) + 1 ... tf j (a "chunk latent" of tf frames)

A pixel time p therefore lives in slot ceil(p / tf); conditioning on a frame at p > 0 conditions
on its whole chunk. Given frames are encoded in *runs* of consecutive slots, each run encoded
alone, so a given latent never depends on pixels that will be generated:

  run from slot 0      canvas frames 0 ... tf e, one causal encode: identical to the latents of
                       the full video (the causal VAE's latent j depends on frames <= tf j only).
                       An image here is encoded alone as a 1-frame video.
  run from slot s > 0  canvas frames tf (s - 1) + 1 ... tf e, with the run's first frame prepended
                       as the causal context (as if the clip were preceded by a still frame);
                       the first (image) latent is dropped. An image here is *held* for the tf
                       frames of its chunk, so it is a chunk latent of a static scene: the slot
                       decodes to the image shown tf times. The alternative, an image latent put
                       in a chunk slot, is a latent the decoder never sees there in training.

Modes (the pixel counts are rounded to whole chunks; the plan's ``info`` records what was used):

  t2i / t2v        nothing given
  i2v              an image at frame 0 ("first"), at the last chunk ("last") or both
  keyframes        images at given pixel times (held over their chunks)
  extend forward   the video's last 1 + tf k frames at the head, new chunks after it
  extend backward  the video's first tf m frames at the tail, new frames before it
  infill           the video's chunks that hold the given pixel times; the rest generated
  connect          the end of one video at the head, the start of another at the tail
  loop             an image at frame 0 and held in one extra chunk after the last frame; that
                   chunk is dropped from the output, so playback wraps back to frame 0
  edit (SDEdit)    the whole video encoded, noised to t = strength, denoised with the new prompt
                   (strength 0 gives every slot, so the input latents come back unchanged)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from sora_jax.data import video_io

EncodeFn = Callable[[np.ndarray], np.ndarray]  # uint8 [1, F, H, W, 3] -> latents [1, T, h, w, z]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to generate: F x H x W pixels, with the latent ``slots`` taken from ``canvas``."""

    mode: str
    num_frames: int
    height: int
    width: int
    canvas: np.ndarray | None = None  # uint8 [F, H, W, 3]; only the given slots' frames are read
    slots: tuple[int, ...] = ()
    init: np.ndarray | None = None  # uint8 [F, H, W, 3] to noise to start_t (SDEdit)
    start_t: float = 1.0
    trim_frames: int = 0  # pixel frames dropped from the end of the decoded video (loop)
    info: dict = dataclasses.field(default_factory=dict)


# ---- frame arithmetic ----


def num_latents(num_frames: int, tf: int) -> int:
    """Latent frames T of a 1 + tf k frame video."""
    if num_frames < 1 or (num_frames - 1) % tf:
        raise ValueError(f"num_frames={num_frames} is not 1 + {tf}*k (1, {1 + tf}, ...).")
    return 1 + (num_frames - 1) // tf


def latent_slot(frame: int, num_frames: int, tf: int) -> int:
    """The latent frame holding pixel frame ``frame`` (negative counts from the end)."""
    if not -num_frames <= frame < num_frames:
        raise ValueError(f"frame {frame} is outside the {num_frames} frames of the video.")
    return math.ceil((frame % num_frames) / tf)


def slot_frames(slot: int, tf: int) -> slice:
    """Pixel frames decoded from latent ``slot``: [0] for slot 0, tf frames after that."""
    return slice(0, 1) if slot == 0 else slice(tf * (slot - 1) + 1, tf * slot + 1)


def frames_for_seconds(seconds: float, fps: float) -> int:
    """Pixel frames in ``seconds`` at ``fps`` (at least 1)."""
    if not seconds > 0 or not fps > 0:
        raise ValueError(f"seconds={seconds} and fps={fps} must both be positive.")
    return max(1, round(seconds * fps))


def _runs(slots: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs (first, last) of consecutive slots."""
    runs: list[tuple[int, int]] = []
    for s in sorted(set(slots)):
        if runs and s == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], s)
        else:
            runs.append((s, s))
    return runs


def _check_video(video: np.ndarray, what: str) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 [F, H, W, 3], got {video.dtype} {video.shape}.")
    return video


def _check_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    image = np.asarray(image)
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(
            f"an image must be uint8 [{height}, {width}, 3], got {image.dtype} {image.shape}."
        )
    return image


def _head_frames(video: np.ndarray, tf: int) -> np.ndarray:
    """The first 1 + tf k frames (the most a causal encode of a head run can use)."""
    return video[: 1 + tf * ((len(video) - 1) // tf)]


def _tail_frames(video: np.ndarray, tf: int) -> np.ndarray:
    """The last 1 + tf k frames (the end of the video stays adjacent to what follows)."""
    return video[len(video) - 1 - tf * ((len(video) - 1) // tf) :]


# ---- plans ----


def text_to_video(num_frames: int, height: int, width: int, *, tf: int) -> Plan:
    """Nothing given; a 1-frame video is an image (t2i)."""
    num_latents(num_frames, tf)
    return Plan("t2i" if num_frames == 1 else "t2v", num_frames, height, width)


def keyframes(
    images: Sequence[np.ndarray], times: Sequence[int], num_frames: int, *, tf: int
) -> Plan:
    """Images [H, W, 3] at pixel ``times``; each fills (is held over) the chunk of its slot."""
    if not images or len(images) != len(times):
        raise ValueError(f"got {len(images)} images for {len(times)} frame times; need one each.")
    t = num_latents(num_frames, tf)
    if t < 2:
        raise ValueError(f"num_frames={num_frames} leaves no frame to generate; expected > 1.")
    h, w = np.asarray(images[0]).shape[:2]
    canvas = np.zeros((num_frames, h, w, 3), np.uint8)
    slots = [latent_slot(p, num_frames, tf) for p in times]
    if len(set(slots)) != len(slots):
        raise ValueError(f"frame times {list(times)} share a latent frame ({tf} frames each).")
    if len(slots) == t:
        raise ValueError(f"frame times {list(times)} give every latent frame; nothing to generate.")
    for img, s in zip(images, slots):
        canvas[slot_frames(s, tf)] = _check_image(img, h, w)
    info = {"keyframe_times": [int(p) % num_frames for p in times], "given_slots": sorted(slots)}
    return Plan("keyframes", num_frames, h, w, canvas, tuple(sorted(slots)), info=info)


def image_to_video(
    images: Sequence[np.ndarray], num_frames: int, *, position: str = "first", tf: int
) -> Plan:
    """Animate an image: it is the first frame, the last frame, or (two images) both."""
    times = {"first": [0], "last": [-1], "both": [0, -1]}.get(position)
    if times is None:
        raise ValueError(f"image position must be 'first', 'last' or 'both', got {position!r}.")
    if len(images) != len(times):
        raise ValueError(f"position {position!r} needs {len(times)} image(s), got {len(images)}.")
    plan = keyframes(images, times, num_frames, tf=tf)
    return dataclasses.replace(plan, mode="i2v", info={**plan.info, "position": position})


def extend(video: np.ndarray, new_frames: int, *, direction: str, tf: int) -> Plan:
    """Extend ``video`` [F, H, W, 3] forward (new frames after it) or backward (before it).

    ``new_frames`` pixel frames are rounded to whole chunks: forward adds tf n frames, backward
    1 + tf (n - 1) (the new slot 0 is one frame).
    """
    video = _check_video(video, "the video to extend")
    if new_frames < 1:
        raise ValueError(f"new_frames={new_frames} must be >= 1.")
    _, h, w, _ = video.shape
    if direction == "forward":
        kept = _tail_frames(video, tf)
        n = max(1, round(new_frames / tf))
        total = len(kept) + tf * n
        canvas = np.zeros((total, h, w, 3), np.uint8)
        canvas[: len(kept)] = kept
        slots = tuple(range(num_latents(len(kept), tf)))
        added = tf * n
    elif direction == "backward":
        if len(video) < tf:
            raise ValueError(f"extending backward needs >= {tf} frames, got {len(video)}.")
        kept = video[: tf * (len(video) // tf)]
        n = max(1, 1 + round((new_frames - 1) / tf))
        total = 1 + tf * (n - 1) + len(kept)
        canvas = np.zeros((total, h, w, 3), np.uint8)
        canvas[total - len(kept) :] = kept
        slots = tuple(range(n, n + len(kept) // tf))
        added = total - len(kept)
    else:
        raise ValueError(f"extend direction must be 'forward' or 'backward', got {direction!r}.")
    info = {"direction": direction, "video_frames_used": len(kept), "new_frames": added}
    return Plan(f"extend_{direction}", total, h, w, canvas, slots, info=info)


def infill(video: np.ndarray, keep_frames: Sequence[int], *, tf: int) -> Plan:
    """Keep the chunks of ``video`` holding pixel times ``keep_frames``; generate the rest."""
    video = _head_frames(_check_video(video, "the video to infill"), tf)
    if not keep_frames:
        raise ValueError("infill needs at least one frame time to keep.")
    f = len(video)
    slots = tuple(sorted({latent_slot(p, f, tf) for p in keep_frames}))
    if len(slots) == num_latents(f, tf):
        raise ValueError(f"keep_frames {list(keep_frames)} keep every latent frame of {f} frames.")
    info = {"keep_frames": [int(p) % f for p in keep_frames], "given_slots": list(slots)}
    return Plan("infill", f, video.shape[1], video.shape[2], video, slots, info=info)


def connect(first: np.ndarray, second: np.ndarray, new_frames: int, *, tf: int) -> Plan:
    """``first``'s end, then about ``new_frames`` generated frames, then ``second``'s start."""
    a = _tail_frames(_check_video(first, "the first video"), tf)
    b = _check_video(second, "the second video")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"videos to connect differ in size: {a.shape[1:3]} vs {b.shape[1:3]}.")
    if len(b) < tf:
        raise ValueError(f"the second video needs >= {tf} frames, got {len(b)}.")
    b = b[: tf * (len(b) // tf)]
    n = max(1, round(new_frames / tf))
    gap = np.zeros((tf * n, *a.shape[1:]), np.uint8)
    canvas = np.concatenate([a, gap, b])
    ta = num_latents(len(a), tf)
    slots = tuple(range(ta)) + tuple(range(ta + n, ta + n + len(b) // tf))
    info = {"first_frames_used": len(a), "second_frames_used": len(b), "new_frames": tf * n}
    return Plan("connect", len(canvas), a.shape[1], a.shape[2], canvas, slots, info=info)


def loop(image: np.ndarray, num_frames: int, *, tf: int) -> Plan:
    """A ``num_frames`` video that starts at ``image`` and wraps back to it seamlessly."""
    t = num_latents(num_frames, tf)
    if t < 2:
        raise ValueError(f"a loop needs num_frames >= {1 + tf}, got {num_frames}.")
    image = np.asarray(image)
    total = num_frames + tf  # one extra chunk, the image held, dropped after decoding
    plan = keyframes([image, image], [0, total - 1], total, tf=tf)
    info = {"given_slots": list(plan.slots), "dropped_frames": tf}
    return dataclasses.replace(plan, mode="loop", trim_frames=tf, info=info)


def edit(video: np.ndarray, strength: float, *, tf: int) -> Plan:
    """SDEdit: noise ``video`` to t = ``strength`` and denoise it with the (new) prompt."""
    video = _head_frames(_check_video(video, "the video to edit"), tf)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"edit strength must be in [0, 1], got {strength}.")
    f, h, w = video.shape[:3]
    info = {"video_frames_used": f, "strength": float(strength)}
    if strength == 0.0:  # nothing to denoise: every slot given, the input comes back unchanged
        slots = tuple(range(num_latents(f, tf)))
        return Plan("edit", f, h, w, video, slots, info=info)
    return Plan("edit", f, h, w, init=video, start_t=float(strength), info=info)


# ---- encoding the given frames ----


def given_latents(
    plan: Plan, encode: EncodeFn, latent_shape: tuple[int, ...], tf: int
) -> tuple[np.ndarray, np.ndarray]:
    """(given [T, h, w, z], mask [T] bool) of ``plan``: each run of given slots encoded alone."""
    given = np.zeros(latent_shape, np.float32)
    mask = np.zeros(latent_shape[:1], bool)
    for s, e in _runs(plan.slots):
        if s == 0:
            z = encode(plan.canvas[None, : tf * e + 1])[0]
        else:
            frames = plan.canvas[tf * (s - 1) + 1 : tf * e + 1]
            z = encode(np.concatenate([frames[:1], frames])[None])[0, 1:]
        given[s : e + 1] = z
        mask[s : e + 1] = True
    return given, mask


# ---- inputs from files ----


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [..., H, W, 3] -> [..., height, width, 3] (Lanczos; unchanged when sizes match)."""
    frames = np.asarray(frames)
    if frames.shape[-3:-1] == (height, width):
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = [np.asarray(Image.fromarray(f).resize((width, height), Image.LANCZOS)) for f in flat]
    return np.stack(out).reshape(*frames.shape[:-3], height, width, 3)


def load_image(path: str) -> np.ndarray:
    """An image file as uint8 [H, W, 3] RGB."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as e:
        raise ValueError(f"could not read an image from {path}: {e}") from e


def load_video(path: str) -> tuple[np.ndarray, float]:
    """A video file as (uint8 [F, H, W, 3], fps); missing files fail with one sentence."""
    return video_io.read_video(path)


# ---- a request (the CLI's flags) -> a plan ----

VIDEO_OPS = ("extend", "keep_frames", "connect_video", "edit_strength")


@dataclasses.dataclass(frozen=True)
class Request:
    """One sampling request as the command line states it; ``None`` / empty = not given."""

    prompts: tuple[str, ...] = ()
    image: tuple[str, ...] = ()
    image_position: str = ""
    video: str = ""
    extend: str = ""
    seconds: float | None = None
    keep_frames: tuple[int, ...] = ()
    connect_video: str = ""
    loop: bool = False
    edit_strength: float | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: float | None = None

    def _given(self) -> list[str]:
        return [op for op in VIDEO_OPS if getattr(self, op) not in ("", (), None)]

    def mode(self) -> str:
        """The mode these flags ask for; a conflict or a missing input fails with one sentence."""
        if not self.prompts:
            raise ValueError("--mode=sample needs at least one --prompt (or a --prompts_file).")
        ops = self._given()
        if self.image and self.video:
            raise ValueError("--image and --video cannot be combined; condition on one of them.")
        if self.seconds is not None and not {"extend", "connect_video"} & set(ops):
            raise ValueError("--seconds applies to --extend and --connect_video only.")
        if self.video:
            return self._video_mode(ops)
        if [op for op in ops if op != "keep_frames"]:
            raise ValueError(f"--{ops[0]} needs a --video to work on.")
        if self.loop:
            if len(self.image) > 1 or self.keep_frames or self.image_position:
                raise ValueError("--loop takes at most one --image and no frame positions.")
            return "loop"
        if self.keep_frames and not self.image:
            raise ValueError("--keep_frames needs a --video (or one --image per frame time).")
        return self._image_mode()

    def _video_mode(self, ops: list[str]) -> str:
        if len(ops) != 1:
            got = ", ".join(f"--{op}" for op in ops) or "none"
            raise ValueError(
                "--video needs exactly one of --extend, --keep_frames, --connect_video or "
                f"--edit_strength; got {got}."
            )
        if self.loop or self.num_frames is not None or self.image_position:
            raise ValueError(
                "--loop, --num_frames and --image_position do not apply to --video; the output "
                "length follows the video (and --seconds)."
            )
        op = ops[0]
        if op in ("extend", "connect_video") and self.seconds is None:
            raise ValueError(f"--{op} needs --seconds (how long the generated part is).")
        if op == "extend" and self.extend not in ("forward", "backward"):
            raise ValueError(f"--extend must be 'forward' or 'backward', got {self.extend!r}.")
        if op == "edit_strength" and not 0.0 <= self.edit_strength <= 1.0:
            raise ValueError(f"--edit_strength must be in [0, 1], got {self.edit_strength}.")
        return {"extend": f"extend_{self.extend}", "keep_frames": "infill",
                "connect_video": "connect", "edit_strength": "edit"}[op]  # fmt: skip

    def _image_mode(self) -> str:
        n = len(self.image)
        if not n:
            if self.image_position:
                raise ValueError("--image_position needs an --image.")
            return "t2i" if self.num_frames == 1 else "t2v"
        if self.num_frames == 1:
            raise ValueError("an --image conditions a video; expected --num_frames > 1.")
        if self.keep_frames:
            if self.image_position or len(self.keep_frames) != n:
                raise ValueError(
                    f"--keep_frames with images needs one frame time per --image (got "
                    f"{len(self.keep_frames)} for {n}) and no --image_position."
                )
            return "keyframes"
        position = self.image_position or ("first" if n == 1 else "both")
        if position not in ("first", "last", "both") or (n == 2) != (position == "both") or n > 2:
            raise ValueError(
                f"--image_position={position!r} with {n} image(s) is not supported; expected "
                "one image at 'first' or 'last', or two images at 'both'."
            )
        return "i2v"


def build_plan(
    req: Request, *, tf: int, size: tuple[int, int], num_frames: int, fps: float
) -> tuple[Plan, float]:
    """(plan, output fps) for ``req``; ``size``, ``num_frames`` and ``fps`` are the defaults."""
    mode = req.mode()
    if req.video:
        video, video_fps = load_video(req.video)
        out_fps = req.fps or video_fps or fps
        h, w = req.height or video.shape[1], req.width or video.shape[2]
        video = resize(video, h, w)
        if mode == "connect":
            second = resize(load_video(req.connect_video)[0], h, w)
            new = frames_for_seconds(req.seconds, out_fps)
            return connect(video, second, new, tf=tf), out_fps
        if mode == "infill":
            return infill(video, req.keep_frames, tf=tf), out_fps
        if mode == "edit":
            return edit(video, req.edit_strength, tf=tf), out_fps
        new = frames_for_seconds(req.seconds, out_fps)
        return extend(video, new, direction=req.extend, tf=tf), out_fps
    images = [load_image(p) for p in req.image]
    h = req.height or (images[0].shape[0] if images else size[0])
    w = req.width or (images[0].shape[1] if images else size[1])
    images = [resize(img, h, w) for img in images]
    f, out_fps = req.num_frames or num_frames, req.fps or fps
    if mode == "keyframes":
        return keyframes(images, req.keep_frames, f, tf=tf), out_fps
    if mode == "i2v":
        position = req.image_position or ("first" if len(images) == 1 else "both")
        return image_to_video(images, f, position=position, tf=tf), out_fps
    if mode == "loop" and images:
        return loop(images[0], f, tf=tf), out_fps
    if mode == "loop" and num_latents(f, tf) < 2:
        raise ValueError(f"a loop needs num_frames >= {1 + tf}, got {f}.")
    # t2i / t2v, and a loop from text (its image is generated first, see sample_run.run_request).
    return dataclasses.replace(text_to_video(f, h, w, tf=tf), mode=mode), out_fps
