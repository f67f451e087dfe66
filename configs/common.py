"""Shared pieces of the configs: argument parsing, model presets, bucket tables.

Configs are ml_collections `get_config(arg)` functions; `arg` is a comma-separated list of
`key=value` or bare flags, e.g. `--config=configs/l.py:res=480,frames=81` or `:runlocal`.
`runlocal` shrinks any config to a CPU-sized run (big_vision's convention).
"""

from __future__ import annotations

import ml_collections

# DiT presets (Wan 2.1 shapes for l/xl: https://github.com/Wan-Video/Wan2.1, config.json of the
# released T2V-1.3B and T2V-14B checkpoints). text_dim 4096 = umT5-XXL hidden size.
DIT_PRESETS = {
    "micro": dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2),
    "tiny": dict(dim=128, ffn_dim=512, num_heads=4, num_layers=4),
    "s": dict(dim=768, ffn_dim=3072, num_heads=12, num_layers=12),  # ~110M
    "b": dict(dim=1024, ffn_dim=4096, num_heads=16, num_layers=20),  # ~330M
    "l": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),  # Wan 2.1 T2V-1.3B
    "xl": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),  # Wan 2.1 T2V-14B
}

# Wan 2.1 VAE: 4x8x8 compression, 16 latent channels.
WAN_VAE = dict(
    base_channels=96,
    channel_mults=(1, 2, 4, 4),
    num_res_blocks=2,
    temporal_downsample=(False, True, True),
    z_channels=16,
    mid_attention=True,
)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """`"a=1,b=x,flag"` -> ConfigDict with the types of `defaults`; unknown keys are an error."""
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"unknown config argument {key!r}; expected one of {sorted(defaults)}."
            )
        kind = type(defaults[key])
        if kind is bool:
            out[key] = value.strip().lower() in ("", "1", "true", "yes")
        else:
            out[key] = kind(value)
    return out


def world_config(**overrides) -> ml_collections.ConfigDict:
    """The synthetic world (sora_jax/data/world.py) with the full vocabulary by default."""
    cfg = ml_collections.ConfigDict(
        dict(
            seed=0,
            num_clips=1_000_000,
            resolutions=((64, 64),),
            num_frames=(9,),
            image_fraction=0.0,
            fps=8,
            max_objects=3,
            camera_pan_prob=0.2,
            occluder_prob=0.2,
            holdout=("red:triangle", "blue:circle", "green:square"),
            split="train",
        )
    )
    cfg.update(overrides)
    return cfg


def data_config(**overrides) -> ml_collections.ConfigDict:
    """Where clips come from and how they are fitted to buckets (sora_jax/data/sources.py)."""
    cfg = ml_collections.ConfigDict(
        dict(
            source="world",  # world | array_record | tfds
            paths="",  # array_record: shard files, globs or a folder, comma-separated
            tfds_name="sora_videos",  # tfds: dataset name (tools/prepare_dataset.py writes it)
            data_dir="",  # tfds: data_dir holding <tfds_name>/<version>/
            split="train",
            target_fps=0.0,  # sample frames at this rate; 0 = every source frame
            aspect_ratios=("1:1",),  # aspect classes of 'F@RESp' bucket rows, e.g. ("16:9", "9:16")
            token_budget=0,  # derive the batch size of rows with batch 0 from this many tokens
            max_crop_fraction=0.5,  # skip clips whose centre crop would lose more of the frame
            max_upscale=1.0,  # skip clips smaller than a bucket by more than this factor
            videos_as_images=True,  # video frames also fill 1-frame (image) buckets
            num_threads=4,  # decode threads per process (or per prefetch worker)
            num_workers=0,  # Grain mp_prefetch worker processes; 0 = decode in the trainer
            max_retries=16,  # undecodable clips replaced in a row before the run stops
        )
    )
    cfg.update(overrides)
    return cfg


def train_config(**overrides) -> ml_collections.ConfigDict:
    """Optimiser and loop settings of one training stage."""
    cfg = ml_collections.ConfigDict(
        dict(
            steps=1000,
            lr=1e-4,
            lr_schedule="cosine",  # cosine | constant (after warmup)
            lr_warmup_steps=100,
            lr_min_ratio=0.1,
            b1=0.9,
            b2=0.99,
            weight_decay=0.01,
            weight_decay_min_ndim=2,  # no decay on biases, norm scales, modulation tables
            weight_decay_exclude=(),  # regexes over dotted param paths, e.g. ("embed",)
            adam_eps=1e-8,
            grad_clip_norm=1.0,  # global norm; 0 = off
            ema_decay=0.999,
            nonfinite_stop_steps=3,  # stop after this many non-finite steps in a row; 0 = never
            log_every_steps=50,
            # Wall-time budget of one invocation, compiles included (0 = none): at the first log
            # step past it the stage saves and ends; running the stage again resumes it.
            max_train_seconds=0,
            # Compile the step for every bucket at once before the first step (tasks that list
            # their batch shapes: the DiT latent cache), and the periodic work's programs (the
            # VAE's evaluation) beside the steps after the first; False = each at its first use.
            precompile=True,
            precompile_threads=8,  # compiles at once (each holds its own host memory)
            # Steps run while other shapes compile and the DiT's later latent caches encode:
            # auto = yes except on GPUs (a cuDNN graph's first run failed there next to other
            # compiles and device work; sora_jax/train/precompile.py).
            precompile_overlap="auto",
            profile_steps=(),  # (a, b): jax.profiler trace of steps [a, b) into <workdir>/profile
            checkpoint_every_steps=500,
            keep_checkpoints=2,
            keep_every_steps=0,  # also keep every checkpoint at a multiple of this; 0 = off
            # ('FRAMESxHEIGHTxWIDTH', global batch size, sampling weight)
            buckets=(("9x64x64", 8, 1.0),),
        )
    )
    cfg.update(overrides)
    return cfg


def dit_stage_config(
    preset: str, *, height: int, width: int, frames: int, batch: int, runlocal: bool
) -> ml_collections.ConfigDict:
    """A config that trains only the DiT (stage "dit") on top of a trained Wan-shaped VAE.

    The text encoder is umT5-XXL (4096-dim, Wan 2.1's) loaded from `text.path`; `runlocal` swaps
    in the packaged MiniLM, a micro DiT and a tiny VAE so the config runs on a CPU.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.compile_cache = False  # True: compiled programs kept in <workdir>/xla_cache (sora_jax.main)
    c.stages = "dit,sample"
    c.mesh = dict(data=1, fsdp=-1, context=1, tensor=1)
    c.world = world_config(resolutions=((height, width),), num_frames=(frames,), image_fraction=0.1)
    c.data = data_config()
    c.vae = dict(WAN_VAE, dropout=0.0, dtype="bfloat16")
    c.vae_train = train_config()
    c.text = dict(encoder="umt5", path="", max_length=512, dtype="bfloat16", cache_dir="")
    c.dit = dict(
        **DIT_PRESETS[preset],
        in_channels=16,
        out_channels=16,
        patch_size=(1, 2, 2),
        text_dim=4096,
        dtype="bfloat16",
        attention="auto",
        cross_attention="",  # the text attention's kernel; "" = `attention`
        remat="full",
    )
    c.dit_train = train_config(
        steps=100_000,
        lr=1e-4,
        lr_warmup_steps=1000,
        log_every_steps=100,
        checkpoint_every_steps=1000,
        buckets=((f"{frames}x{height}x{width}", batch, 0.9), (f"1x{height}x{width}", batch, 0.1)),
        caption_probs={"prompt": 0.2, "caption": 0.8},
        caption_dropout=0.1,
        vae_workdir="",  # a trained VAE stage, e.g. from configs/vae.py or imported Wan weights
        # Encode clips in the step 1 + 4 + 4 ... frames at a time (flat memory: 32 clips of
        # 33x256x448 at once would hold ~23 GB per full-resolution activation); 0 = all at once.
        vae_encode_chunk_frames=4,
        latent_cache_dir="",  # train from tools/cache_latents.py output instead of encoding
        # Videos of fixed world prompts at config.sample's size from the EMA weights, written to
        # <workdir>/dit/samples/step_<N>/ and graded (sample_color_acc etc. in metrics.jsonl).
        sample_every_steps=0,  # 0 = off (a full-size sample of a large model takes minutes)
        sample_num_prompts=4,
        sample_steps=50,
        sample_guidance=5.0,
        sample_use_ema=True,  # False: the raw parameters
    )
    c.flow = dict(
        logit_mean=0.0,
        logit_std=1.0,
        shift=5.0,  # Wan 2.1 T2V sampling shift
        # One model for every mode: given frames are clean and excluded from the loss.
        cond_mixture={
            "t2v": 0.6,
            "i2v_head": 0.15,
            "extend_head": 0.1,
            "i2v_tail": 0.05,
            "connect": 0.05,
            "infill": 0.05,
        },
    )
    c.sample = dict(
        num_prompts=8,
        prompts=(),
        num_frames=frames,
        height=height,
        width=width,
        steps=50,
        sampler="euler",
        guidance=5.0,
        seed=0,
        batch_size=1,
        autoguidance=1.0,  # > 1: guided away from the DiT checkpoint of autoguide_step
        autoguide_step=0,
        factorized=False,  # text -> image -> video (Generator.sample)
    )
    if runlocal:
        c.stages = "vae,dit,sample"
        c.world = world_config(resolutions=((32, 32),), num_frames=(9,))
        c.vae = dict(
            base_channels=8,
            channel_mults=(1, 2, 2),
            num_res_blocks=1,
            temporal_downsample=(True, True),
            z_channels=8,
            mid_attention=False,
            dropout=0.0,
            dtype="float32",
        )
        c.vae_train = train_config(steps=4, buckets=(("9x32x32", 2, 1.0),), log_every_steps=2)
        c.text = dict(encoder="minilm", path="", max_length=8, dtype="float32", cache_dir="")
        c.dit.update(DIT_PRESETS["micro"])
        c.dit.update(in_channels=8, out_channels=8, text_dim=384, dtype="float32", remat="none")
        c.dit_train.update(steps=4, log_every_steps=2, buckets=(("9x32x32", 2, 1.0),))
        c.sample.update(num_prompts=2, num_frames=9, height=32, width=32, steps=2, batch_size=2)
    return c
