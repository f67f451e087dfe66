"""The world model of issue 9: VAE + DiT on the synthetic world, sized for one H100/H200.

One command trains the VAE (10,000 steps, ~4.5 min on an H100), caches latents, trains the DiT
(15,000 steps of 256 clips, ~17 min) and runs the evaluation suite (sora_jax/eval_suite.py:
every generation mode, graded; ~1 min):

  python -m sora_jax.main --config=configs/world.py --workdir=/tmp/world

Stages one at a time (a stage resumes from its newest checkpoint, so a call that ran out of
time continues where it stopped):

  python -m sora_jax.main --config=configs/world.py --workdir=/tmp/world --stages=vae
  python -m sora_jax.main --config=configs/world.py --workdir=/tmp/world --stages=dit
  python -m sora_jax.main --config=configs/world.py --workdir=/tmp/world --mode=eval
  python -m sora_jax.main --config=configs/world.py --workdir=/tmp/world --mode=sample \
      --prompt="a red triangle moving left"      # a held-out colour x shape pair

Results land in <workdir>/summary.json (losses, VAE PSNR, wall times), <workdir>/eval/
(<set>.json, <set>.png contact sheets, GIFs, summary.json with the issue's targets checked) and
<workdir>/{vae,dit}/profile/summary.json (device time per kernel of three traced steps).

The world: 1-3 objects (a subject and up to two smaller distractors), camera pans, occluding
bars, flat / gradient / textured backgrounds and still images; three colour x shape pairs are
held out of training entirely (`world.holdout`) to measure generalisation.

The default (`res=64`): frames of 64x64, 64x96 and 96x64 (aspect buckets) with 1, 17 and 33 frames
(each bucket is one compile of the train step, so there are five); a VAE compressing 4x8x8 to 16
channels (a 17x64x64 clip -> 5x8x8x16 latents) whose decoder also trains on latents with noise
(`vae_train.latent_noise`); a ~30M-parameter DiT with 1x2x2 patches, so a 17-frame clip is 80
tokens and batches are large; VAE 10,000 steps, DiT 15,000, flow shift 1; the suite samples text ->
image -> video with guidance 5 and autoguidance 2 by the DiT's step 2,500, on prompts drawn from
`eval.seed` 100 (configs/world_eval.py's `res64_suite` says why; --mode=sample keeps plain guidance
5). Training is deterministic: the twenty-second run repeated the nineteenth to the bit. It is the
ninth run's recipe (9 of issue 9's 10 targets, object permanence 0.71;
tools/bench/results/world_h200_run9.json; `ninth` gives its settings) with the latent noise of the
fourteenth run (t2v shape 0.97, permanence 0.70 at guidance 3 and 0.75 at 5 with both stages cut
short by time; tools/bench/results/world_h100_run14.json) and step counts that fit a session of
1,800 s of an H100 after its start (the sixteenth run: VAE 274 s, DiT 768 s for 11,000 steps,
evaluation 50 s; tools/bench/results/world_h100_run16.json). Its DiT blocks are unrolled with q/k/v
fused: 1.37x the scanned step on the H100 (the main bucket: 64.1 -> 46.7 ms,
tools/bench/results/world_dit_res64_h100.json). Stages end by their step counts;
`max_train_seconds` only stops one that runs far slower than that (it resumes when run again), or
one that would overrun a deadline (tools/experiments/world_gpu.sh with DEADLINE set).

Arguments: `res=128`, the twelfth run's recipe: the world at 128x128 (and 128x192, 192x128)
through a 4x16x16 VAE to 32 channels with parameter-free shortcuts and frame 0 weighted 3x, so
the DiT keeps 8x8 latent frames and 80 tokens a clip, flow shift 2, 10,000 steps per stage. It
was meant to give small subjects more pixels; its VAE's round trips keep the object through the
bar in only 0.75 of the occlusion scenes (tools/bench/results/world_h100_run12_noeval.json), a
ceiling below the target, and no run of it reached its evaluation. `temporal=2` (res=64 only):
a VAE that halves time once instead of twice (9 latent frames a 17-frame clip, 144 tokens) and
half the clips per DiT step in the video buckets, at about the recipe's tokens a step
(`_temporal2` says why it was tried and what the twentieth run found: 7 of 10, permanence 0.60,
t2v motion 0.58). `micro` (CPU, 2 steps per stage and 1-2 samples per eval set, for tests)
and `runlocal` (CPU, 50 steps per stage: the whole recipe in a few minutes, learning little)
shrink the recipe chosen, e.g.
`--config=configs/world.py:res=128,runlocal`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import ml_collections  # noqa: E402
import world_eval  # noqa: E402  (configs/world_eval.py: the evaluation suite's settings)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    # The body states the res=128 recipe (the twelfth run's), with the evidence for each choice;
    # `_res64` then turns it into the res=64 one (the default), and `_shrink` into CPU sizes.
    args = common.parse_arg(arg, micro=False, runlocal=False, res=64, ninth=False, temporal=4)
    if args.res not in (64, 128):
        raise ValueError(f"configs/world.py: res={args.res} is not a recipe; expected 64 or 128.")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stages = "vae,dit,eval"  # eval: sora_jax/eval_suite.py (also --mode=eval)
    c.compile_cache = not (
        args.micro or args.runlocal
    )  # <workdir>/xla_cache: resumes skip compiles
    c.mesh = dict(data=1, fsdp=-1, context=1, tensor=1)  # one GPU: everything on 'fsdp'

    # The synthetic world (sora_jax/data/world.py). Training clips are rendered at each
    # bucket's size, so `resolutions` and `num_frames` only shape `world[i]` items.
    c.world = common.world_config(
        # 128x128 (was 64x64 in runs 1-9): a small subject (0.16 of the frame) is ~20 pixels,
        # 2.5 latent pixels across instead of 1.25.
        resolutions=((128, 128), (128, 192), (192, 128)),
        num_frames=(1, 9, 17, 33),
        image_fraction=0.1,  # specs that are stills: static scenes captioned "an image of ..."
        max_objects=3,  # the subject + up to 2 distractors (0.45x its size, other colours)
        camera_pan_prob=0.2,  # the whole scene slides (background, objects, occluder)
        # A bar hides the subject at mid-clip (object permanence). 0.4 (was 0.25): the third
        # run kept the object through the bar in 18 of 32 scenes (target 24), losing the shape
        # of small and of growing/shrinking subjects, while the VAE's round trips of the same
        # scenes kept 31 of 32 (tools/bench/results/vae_permanence_h200.json): the DiT, not the
        # latents, drops them; it now sees occluded scenes 1.6x as often. The eval suite's
        # prompts do not depend on it (world.prompt_suite).
        # The seventh run tried 0.5 with small subjects drawn 0.45 of the time (size_weights
        # (0.45, 0.35, 0.2)): permanence fell from 0.72 to 0.59 and small subjects did not gain
        # (0.47 -> 0.34; tools/bench/results/world_h200_run7.json), so sizes are equally likely
        # again, and the bar is in 0.4 of the clips, as in the sixth run.
        occluder_prob=0.4,
        holdout=("red:triangle", "blue:circle", "green:square"),  # never seen in training
    )
    # The world, rendered by 8 Grain worker processes of one thread each: threads of one process
    # share the GIL, so they rendered ~31 batches of 32 17x64x64 clips per second however many
    # there were, which capped the VAE stage at ~22 steps/s on the H200; processes scale (3 on
    # this 2-core CPU: 64 batches/s).
    c.data = common.data_config(num_threads=1, num_workers=8)

    # Causal 3D VAE, 4x16x16 compression to 32 channels. Runs 1-10 compressed 4x8x8 to 16
    # channels; at 128x128 that left 16x16 latent frames, on which the tenth run's DiT drew
    # objects doubled and occluders jumping from frame to frame (training samples at 5,000
    # steps: shape 0.15, motion 0.19, flicker 8.6x), and a CPU analog lost motion the same way
    # (tools/bench/results/world_runs.md, "A CPU analog of the tenth run": 0.53 on 8x8 latent
    # frames, 0.06 on 16x16 at the same tokens, 0.16 with flow shift 2). One more spatial level
    # keeps the DiT on the 8x8 latent frames of runs 1-9, each latent pixel 16x16 pixels in
    # twice the channels (the compression of pixel values 96x instead of 48x; DC-AE compresses
    # 32x32 to 32 channels).
    c.vae = dict(
        base_channels=64,
        channel_mults=(1, 2, 4, 4),  # 3 spatial downsamples after the 2x2 patch: 16x
        num_res_blocks=1,
        # 4x in time on the first two levels, as runs 1-10 (Wan 2.1 halves time on the last
        # two): the levels at 64x64 and 32x32 pixels cost what they did, the new one at 8x8
        # latent pixels little.
        temporal_downsample=(True, True, False),
        z_channels=32,
        # Parameter-free residual paths around the resamplers and the bottleneck (DC-AE's
        # space-to-channel shortcuts). The eleventh run's VAE without them: 28.4 dB held out
        # and round trips keeping 0.66 of the shapes at 10,000 steps (the 4x8x8 VAE: 32.2 dB,
        # 1.00). On a 64x64 analog of this VAE (tools/bench/results/vae16_sweep_cpu.json, 1,000
        # steps) they gave +1.65 dB (19.58 -> 21.23), more than dropping the norms (+1.06; both
        # 21.17), a wider last level (-0.01) or 64 latent channels (-0.05), and more than the
        # 4x8x8 VAE without them (20.78); on a 2,000-step schedule +1.93 dB (20.42 -> 22.35).
        # On the GPU (the twelfth run, with frame 0 weighted 3x) only +0.16 dB at 10,000 steps
        # (28.5 dB), round trips keeping the object through the bar in 0.75 of the suite's
        # occlusion scenes (the 64x64 runs' 4x8x8 VAE: 0.95): the 16x VAE caps permanence.
        shortcuts=True,
        mid_attention=False,  # 8x8 latents: the convolutions see most of the frame
        dropout=0.0,
        dtype="bfloat16",  # convolutions in bf16; parameters and loss in fp32
        # 2x2 pixels per token before the first conv: every level runs at half the resolution.
        # On the 32x32 world (CPU) it learned as fast per step as the unpatched VAE at 1/3.4 of
        # the time per step (20.4 vs 20.3 dB after 600 steps), so more steps fit the budget.
        patch_size=2,
    )
    c.vae_train = common.train_config(
        # A fixed number of steps, not a time budget, so that a re-run repeats the run: 330 s
        # held 9,300 and 7,800 steps on two H200 leases (2026-12-03: 32.1 and 31.4 dB held out).
        # A 20,800-step schedule in 540 s reached 36.9 dB and again 37.8 dB. 7,500 steps (the
        # fourth and fifth runs: 32.2 dB, 42 steps/s, 255 s with compiles and evaluations) kept
        # the object through the bar in only 0.85 of the 96 occlusion scenes' round trips (their
        # real clips: 1.00), the ceiling of the DiT's 0.67 (issue 9 asks 0.75); the misses are
        # small objects (~5-10 px), whose shape a blurrier VAE loses. Runs 6-9 trained 15,000.
        # At 128x128 (the tenth run) the objects are twice as many pixels across; held out, its
        # VAE reached 32.2 dB at 10,000 steps and 33.2 at 15,000 (colour, shape and motion of
        # the round trips 1.00 at both), but the 15,000 steps' 485 s left the run ~1,780 s of
        # the session's 1,800 and the device was lost before the eval: 10,000 steps (~355 s).
        steps=10000,
        lr=2e-3,  # the sweep (tools/bench/results/vae_sweep_h200.json): larger batch + lr
        lr_warmup_steps=200,
        b2=0.999,
        weight_decay=0.0,
        ema_decay=0.998,
        log_every_steps=100,
        # Each checkpoint (435 MB, asynchronous) slowed the 100 steps after it by ~1.2 s in the
        # fourteenth run (~27 steps/s against 39 after steps 1,000, 3,000, 5,000, ...; after
        # 4,000, 6,000, 8,000 an evaluation too: ~17; tools/world_report.py's fixed_costs).
        checkpoint_every_steps=2500,
        max_train_seconds=600,  # a safety net only: the recipe's runs end by `steps`
        # One bucket, one compile: the VAE is causal and its convolutions are the same at every
        # time step after the first frame (encoded alone, as an image), so 17-frame clips train
        # the 1-, 17- and 33-frame paths the DiT uses. 8 clips of 128x128: the pixels (and the
        # convolutions' FLOPs) per step of runs 1-9's 32 clips of 64x64, which took 22.8 ms per
        # step on the H200 (tools/bench/world_vae.py); in the tenth run 23-26 ms per step on the
        # device + 1.5 ms for the batch (39 steps/s). Fewer, longer clips or more, shorter ones
        # at the same frames per step: on a 64x64 analog (tools/bench/results/
        # vae16_clip_length_cpu.json) 8 clips of 9 frames, 4 of 17 and 2 of 33 did alike on
        # 17-frame clips (20.6, 20.7, 20.3 dB) and on 33-frame ones, 16 of 5 frames did not (17.8).
        buckets=(("17x128x128", 8, 1.0),),
        # MSE dominates (PSNR is MSE; L1 drops small objects, configs/tiny.py), SSIM for edges.
        l1_weight=0.0,
        l2_weight=10.0,
        # Frame 0 is encoded alone: the image path that image->video's given frame (issue 9 asks
        # >= 30 dB) and the DiT's images take; at 1/17 of a clip it drew 1/17 of the loss. 3x (a
        # sixth of it): on a 64x64 analog of this VAE (9-frame clips, 1,000 steps, two seeds;
        # tools/bench/results/vae16_first_frame_cpu.json) frame 0 +1.84 and +0.25 dB, all
        # frames +1.17 and +0.06 dB.
        first_frame_weight=3.0,
        ssim_weight=0.2,
        grad_loss_weight=0.0,
        kl_weight=1e-6,
        disc_weight=0.0,  # no GAN: the world has no texture a GAN would need to invent
        eval_every_steps=2000,  # held-out PSNR/SSIM of the EMA weights during training
        # A trace of 3 steps, summed per kernel into <workdir>/vae/profile/summary.json (the
        # split of the ~25 ms step; the run's numbers do not change).
        profile_steps=(2101, 2104),
        eval_clips=64,  # per bucket
        # The evaluation suite's 96 occlusion scenes of `eval.seed` 0 through the round trip at
        # every eval (`recon_permanence`): the ceiling of the DiT's object permanence, known
        # minutes before the DiT trains (the sixth to ninth runs' 4x8x8 VAEs kept 0.95; the
        # eval suite grades the final VAE's the same way, and its own scenes' round trips).
        eval_occlusion_clips=96,
        # Gaussian noise added to the latents the decoder trains on, up to this many standard
        # deviations of each channel (vae_losses.add_latent_noise; 0 = off, as runs 1-13). Run
        # 13's small subjects changed shape from frame to frame, before the bar as after it,
        # while the VAE's round trips of the same scenes kept them: the decoder draws the DiT's
        # near-but-not-exact latents less steadily than the encoder's own.
        latent_noise=0.0,
        # > 0: the occlusion scenes' round trips again from latents with noise at that many
        # standard deviations (`recon_permanence_noisy`): how steadily the decoder draws such
        # latents. The fourteenth run's (0.1): 0.84 against 0.85 without noise. Off: its first
        # evaluation's compile added ~30 s to the VAE stage.
        eval_latent_noise=0.0,
    )

    # Frozen text encoder: the packaged MiniLM (384-dim, no download). 96 tokens hold the
    # longest world recaption (~85 tokens), so the occluder sentence at its end survives.
    c.text = dict(encoder="minilm", path="", max_length=96, dtype="float32", cache_dir="")

    c.dit = dict(
        # 384 wide (30M parameters). The eighth run tried 512 (53M, 1.28x the time per step):
        # object permanence 0.72 as the 384-wide sixth run, 11 scenes kept by one run only and
        # 11 by the other (tools/bench/results/world_h200_run8.json): capacity is not what the
        # shapes lack, nor (the ninth run, dit_train.buckets) the clips per step.
        dim=384,
        ffn_dim=1536,
        num_heads=6,  # head_dim 64
        num_layers=12,
        in_channels=c.vae.z_channels,
        out_channels=c.vae.z_channels,
        # 2x2 latent pixels per token (32x32 pixels, 128 values): a 17x128x128 clip is 80
        # tokens, as a 17x64x64 clip was in runs 1-9, so the clips and tokens per step are the
        # ninth run's (the tenth run's 1x4x4 patches of 16x16 latents: the same tokens).
        patch_size=(1, 2, 2),
        text_dim=384,
        dtype="bfloat16",  # matmuls and attention in bf16; norms, modulation, residuals fp32
        # XLA's attention: the runs that measured this recipe used it. cuDNN's step is 1.25x
        # faster on the H200 (tools/bench/results/world_dit_h200.json) but the stage died at a
        # bucket's first steps three times (the last with every compile finished first, while
        # latent caches were still encoding); on GPUs the stage now builds every cache before its
        # first step, not yet run there with cuDNN: --config.dit.attention=auto tries it.
        attention="xla",
        cross_attention="",  # the text attention's kernel; "" = `attention`
        pooled_text=False,  # the mean text token also drives the modulation (DiTConfig)
        # The 12 blocks unrolled, q/k/v as one matmul: the step of the res=64 recipe's main
        # bucket (256 clips of 17x64x64, XLA attention) took 64.1 ms scanned, 62.8 fused, 51.4
        # unrolled and 46.7 both (1.37x; H100, tools/bench/results/world_dit_res64_h100.json),
        # same loss to 1e-5 after 33 steps. Unrolled compiles take 133-138 s against 74-81 s a
        # bucket; world_gpu.sh compiles them beside the VAE stage.
        scan_layers=False,
        fused_projections=True,
        remat="none",  # ~100-300 tokens per clip: activations are small
    )
    c.dit_train = common.train_config(
        # 25.9 steps/s on the H200 with deterministic kernels (28 ms compute + 9.5 ms waiting
        # for the batch; tools/bench/results/world_h200_run3.json), 23.5 in the fourth run
        # (12 + 32 ms: with the batch copy moved into the producing thread, since moved back):
        # the batches came too slowly, not the steps: a new caption's encode (in 59% of the
        # steps) queued behind the train steps on the device. Captions now start encoding 8
        # steps ahead (sora_jax/train/caption_embedder.py; the same numbers): 28.2 steps/s in
        # the fifth run (33.1 ms on the device + 2.3 ms for the batch, world_h200_run5.json).
        # 24,000 steps of the 384-wide DiT took ~16.5 min (970-1,007 s with the sample rounds),
        # and the stage's compiles run beside the VAE stage (tools/experiments/world_gpu.sh).
        # With 16,000 steps at lr 3e-4 the shape accuracy of training samples plateaued at 0.72
        # (main bucket alone, 10k-16k steps); lr 1e-3 had a 15% lower loss at every 1,000 steps
        # of an A/B to 6,000 and kept climbing to 0.79 at 14,000 when trained on
        # (tools/bench/results/world_arms_h200.json), so the recipe trains longer at 1e-3.
        # Twice the clips per step of runs 1-8 (dit_train.buckets) cost ~1.75x the time per step
        # (51 against 29 ms in tools/bench/results/world_dit_h200.json; ~60 ms in a run with its
        # data): 15,000 steps (~17.5 min with the stage's rounds and caches, 3.8M clips seen; the
        # sixth run 24,000 steps of 128, 3.1M) kept the VAE + DiT + eval within a session's
        # 1,800 s of device time, until the eleventh run's machine took ~270 s to start (and two
        # failed starts ~195 s): its DiT stage took 1,066 s and the eval never ran. 12,000 steps
        # (~850 s) leave room for such a start. Its training samples drew shapes 0.88 and
        # motions 0.96 at 10,000 steps, 0.92 and 1.00 at 15,000 (the ninth run's at 15,000:
        # 0.90 and 0.96). A re-run must repeat every step, so the run cannot be cut short to fit.
        # 10,000 (was 12,000): the lent machine may be an H100, whose memory bandwidth is 0.7x
        # the H200's that measured ~61 ms per step; 10,000 steps of up to ~85 ms still leave the
        # evaluation its minute.
        steps=10000,
        lr=1e-3,
        lr_warmup_steps=300,
        weight_decay=0.0,
        ema_decay=0.999,
        log_every_steps=200,
        # A checkpoint (456 MB, written asynchronously) slowed the ~200 steps after it by ~5.5 s
        # in the fourteenth run (9 steps/s against 12-15 in the logs between, whose intervals
        # also hold a latent-cache refresh; world_h100_run14.json's metrics): 11 checkpoints
        # were ~60 s of its DiT stage. Every 2,500 steps: 4 (~22 s); the stage runs in one
        # process from start to end (a deadline stop also saves), so a crash loses <= ~3 min.
        checkpoint_every_steps=2500,
        # VAE ~390 s + DiT ~890 s (latent caches ~50 s, the steps at 15.9/s, two sample
        # rounds ~40 s, ~80 s with their occlusion scenes: twice the videos) + eval ~60 s:
        # ~1,340 s, and the machine's start 90-270 s, of the session's 1,800 (the eleventh run's
        # 15,000 DiT steps needed ~1,800 with its start). The stage must end by its step count
        # for a re-run to repeat it (a stop by time lands on another step), so the cap is far
        # above the expected time: only a much slower machine meets it (rerun the stage to train
        # on).
        max_train_seconds=1800,
        # ('FRAMESxHEIGHTxWIDTH', batch, weight): tokens per clip in brackets. Each bucket is
        # one compile of the step (and of the latent-cache encode), so there are few, and
        # the eval suite samples only trained shapes. Twice the clips of runs 1-8: in the
        # patch-size A/B (world_patch_ab_h200.json) 128 clips of 80 tokens per step learned
        # shapes far faster than 32 clips of 320 tokens (0.54 against 0.29 in the same time),
        # and neither width (the eighth run) nor steps past 16,000 (runs 5-8) moved the shapes:
        # a step's prompts, one per clip, are what the shapes are learned from. The ninth run
        # (these batches at 64x64, tools/bench/results/world_h200_run9.json) kept the object
        # through the bar in 0.71 of the scenes (the sixth 0.72, 61 scenes kept by both, 8 and
        # 7 by one only): the batches stay, so that the 128x128 world is the one change.
        buckets=(
            ("17x128x128", 256, 0.45),  # [80] the main shape: every conditioned eval mode
            ("17x128x192", 192, 0.1),  # [120] landscape
            ("17x192x128", 192, 0.1),  # [120] portrait
            ("33x128x128", 128, 0.15),  # [144] long clips
            ("1x128x128", 1024, 0.2),  # [16] images (joint image + video training)
        ),
        # Short prompts ("a red circle moving left") and long recaptions (every object, the
        # background, pans and occluders), as the report trains on both.
        caption_probs={"prompt": 0.5, "caption": 0.5},
        caption_dropout=0.1,  # empty caption: the unconditional branch of CFG
        vae_workdir="",  # "" = <workdir>/vae
        # Encode this many clips per bucket (frozen VAE) and train on their latents; every 500
        # steps each bucket swaps 1,024 of them for clips it has not seen (rendered and encoded
        # beside the steps), so 15,000 steps see ~35,000 clips per bucket instead of the same
        # 4,096 again and again (each seen about as often as with 512 per 500 steps at half the
        # batch). On the H200 (2026-12-03, second run) it cost no speed: 32 steps/s
        # between refreshes, none waited for; training loss at 8,000 steps 0.144 against 0.139
        # with a fixed cache of 8,192 clips.
        latent_cache_clips=4096,
        latent_cache_refresh_steps=500,
        latent_cache_refresh_clips=1024,
        # The caches' clips rendered by 6 worker processes, not by a thread of the trainer: in
        # the fourteenth run a refresh (5,376 clips) slowed the ~200 steps around it by ~3.2 s
        # (22 refreshes: ~70 s), while encoding them is ~0.7 s of device time by the VAE
        # step's; and the first cache waited 43 s for clips rendered beside the step programs'
        # loading (world_h100_run14.json). The same clips either way (tests/test_latent_refresh.py).
        latent_cache_render_workers=6,
        latent_cache_dir="",  # or tools/cache_latents.py output
        # Graded samples of the EMA weights every N steps (<workdir>/dit/samples/, accuracies in
        # metrics.jsonl); 0 = off. The eval stage grades every mode at the end; these rounds (one
        # compile, then seconds each) leave numbers behind when a run is cut short: two GPU
        # runs lost their machine before the eval stage. 48 prompts (as the A/B arms had): one
        # round's shape accuracy then has a standard error of ~0.07, not ~0.12.
        sample_every_steps=5000,  # after steps 5,000, 10,000 and 15,000 (~12 s each)
        sample_num_prompts=48,
        # And the first 48 of the eval suite's occlusion scenes (long captions), graded by object
        # permanence (`sample_permanence`), the one target runs 1-9 missed: a run cut short
        # before its eval still says where it stands (two runs were).
        sample_num_occlusion=48,
        # A trace of 3 steps mid-run, summed per kernel into <workdir>/dit/profile/summary.json:
        # where the 61 ms step of this 30M-parameter DiT goes (~6% MFU on the H200; no profile
        # of the recipe's step exists yet). Latent-cache refreshes encode beside the steps, so
        # the VAE's kernels may show in it. The run's numbers do not change.
        profile_steps=(3101, 3104),
        sample_steps=20,
        sample_guidance=5.0,
        sample_use_ema=True,
    )
    c.flow = dict(
        logit_mean=0.0,
        logit_std=1.0,
        # SD3's resolution shift. Runs 1-9 (64x64, 8x8x16 latents a frame) trained and sampled
        # at 1; their training samples after 5,000 steps drew shapes 0.48 and motions 0.81
        # (ninth run). The tenth run (128x128, 16x16x16 latents) at 1 drew shapes 0.15 and
        # motions 0.19, objects doubled and occluders jumping: the layout, which the noisiest
        # steps decide. SD3 shifts by the square root of the ratio of pixels (4x here: 2);
        # on the CPU, shift 2 alone brought back little of the motion of 16x16 latents (0.06 ->
        # 0.16; world_runs.md, "A CPU analog of the tenth run"), so the eleventh run also keeps 8x8
        # latent frames (vae above). Its frames are 4x the pixels of runs 1-9 in twice the
        # channels, so it trains and samples at 2; the eval suite's variants sample at 1 and 3.
        # The training samples' `sample_flicker_ratio` at 5,000 steps tells early which way a
        # run goes (the tenth run's: 8.6x, bars drawn in 46 of 48 samples; the eleventh's 5.5x,
        # bars in 27: `sample_bar_rate`; without them 3.5x and 2.5x; the world's clips: 1.0).
        shift=2.0,
        # Conditioning modes drawn per training sample (sora_jax/diffusion/conditioning.py):
        # one model for text->video, image->video, extension, connection, infill and loops.
        cond_mixture={
            "t2v": 0.4,
            "i2v_head": 0.15,
            "i2v_tail": 0.05,
            "extend_head": 0.12,
            "extend_tail": 0.08,
            "connect": 0.08,
            "infill": 0.07,
            "loop": 0.05,
        },
    )
    c.sample = dict(  # --mode=sample defaults (and the optional "sample" stage)
        num_prompts=16,
        prompts=(),
        num_frames=17,
        height=128,
        width=128,
        steps=60,  # as the evaluation suite (eval_config)
        sampler="euler",
        guidance=5.0,
        seed=0,
        batch_size=16,
        autoguidance=1.0,  # > 1: guided away from the DiT checkpoint of autoguide_step
        autoguide_step=0,
        factorized=False,  # text -> image -> video (Generator.sample)
    )
    c.eval = world_eval.eval_config()

    if args.temporal not in (2, 4):
        raise ValueError(
            f"configs/world.py: temporal={args.temporal} is not a recipe; expected 4 or 2."
        )
    if args.res == 64:
        _res64(c, ninth=args.ninth)
        if args.temporal == 2:
            _temporal2(c)
    elif args.ninth or args.temporal != 4:
        raise ValueError("configs/world.py: ninth and temporal=2 are res=64 recipes; drop res=128.")
    if args.micro or args.runlocal:
        _shrink(c, steps=50 if args.runlocal else 2, temporal=args.temporal)
    return c


def _res64(c: ml_collections.ConfigDict, ninth: bool) -> None:
    """The 64x64 recipe: the world at 64x64 (and 64x96, 96x64), a 4x8x8 VAE to 16 channels
    without shortcuts or frame-0 weight (8x8 latent frames, 80 tokens a 17-frame clip, as at
    128x128), flow shift 1, the ninth run's DiT and batches (commit dab4fc0,
    tools/bench/results/world_h200_run9.json); the evaluation suite's shapes follow.

    Since the fourteenth run (tools/bench/results/world_h100_run14.json) the VAE's decoder also
    trains on noisy latents (`latent_noise` 0.2), and each stage ends at the steps that fit one
    session's device time after the machine's start (VAE 10,000, DiT 15,000; both schedules
    anneal to their end). `ninth`: the ninth run's settings (15,000 steps per stage, no latent
    noise, guidance 3 in the suite and --mode=sample)."""
    c.world.resolutions = ((64, 64), (64, 96), (96, 64))
    c.vae.update(channel_mults=(1, 2, 4), temporal_downsample=(True, True), z_channels=16,
                 shortcuts=False)  # fmt: skip
    c.vae_train.update(
        steps=15000 if ninth else 10000,
        buckets=(("17x64x64", 32, 1.0),),
        first_frame_weight=1.0,
        # The fourteenth run (noise 0.2; VAE and DiT cut by time to 9,500 and 11,200 steps of
        # 15,000) against the thirteenth (no noise; 14,000 and 11,000): t2v shape 0.97 against
        # 0.86, the sweep's 0.91 against 0.72, object permanence 0.70 against 0.59 (guidance 5:
        # 0.75 against 0.65), the DiT's validation loss at t = 0.5 0.118 against 0.159, while
        # the VAE's round trips of the occlusion scenes kept 0.85 of them against 0.94.
        latent_noise=0.0 if ninth else 0.2,
    )
    c.dit.update(in_channels=16, out_channels=16)
    c.dit_train.update(
        # 15,000 (the ninth run's; was 11,000). The sixteenth run trained 11,000 steps whose
        # schedule annealed to their end (cosine to 0.1x lr) and drew motions 0.77 (t2v; i2v
        # 0.59) and kept 0.73 of the occluded objects, where the fourteenth, cut by time at
        # 11,200 steps of a 15,000-step schedule (lr still 3.2e-4 at step 10,200, against
        # 1.2e-4), drew 0.94 and kept 0.75 at the same guidance: that schedule, now run to its
        # end. Its fixed costs cut (dit_compile ready with the VAE, 16.6 DiT steps/s against
        # 14.4; world_h100_run16.json's fixed_costs), the sixteenth run took 1,092 s, so 4,000
        # more steps (~250 s) fit a session after the machine's start (~120 s).
        steps=15000,
        buckets=(
            ("17x64x64", 256, 0.45),
            ("17x64x96", 192, 0.1),
            ("17x96x64", 192, 0.1),
            ("33x64x64", 128, 0.15),
            ("1x64x64", 1024, 0.2),
        ),
        # All 96 text tokens for the 1-frame bucket too (image_text_length 0). The seventeenth
        # run gave it 64 on the belief that its captions fit (the world's image recaptions: at
        # most 52 MiniLM tokens), but the bucket draws single frames of the world's videos as
        # well, captioned like the videos: 304 of 4,096 of its captions (7.4%) are longer than
        # 64 tokens (up to 92), and the run cut 131,089 of them (their last sentences: the
        # pan, the bar). Its step was not faster either: 46.5 ms median at 64 tokens, as the
        # main bucket's (world_h100_run17.json's fixed_costs).
        image_text_length=0,
    )
    c.flow.shift = 1.0
    c.sample.update(height=64, width=64)
    c.eval.update(shape="17x64x64", sweep_shapes=("17x64x96", "17x96x64", "33x64x64"))
    # Autoguidance (Karras et al. 2024: guide a model away from a weaker version of itself) by
    # the run's own DiT at 2,500 steps (1/6 of its training; its training samples at 5,000:
    # shapes 0.79, permanence 0.42) needs that checkpoint kept (6 of ~0.46 GB on the GPU's disk;
    # they never leave the machine).
    c.dit_train.keep_every_steps = 2500
    if ninth:
        c.sample.guidance = c.eval.guidance = 3.0
        c.eval.t2v_variants = tuple(v if v != {"guidance": 3.0} else {"guidance": 5.0}
                                    for v in c.eval.t2v_variants)  # fmt: skip
        return
    world_eval.res64_suite(c.eval)


def _temporal2(c: ml_collections.ConfigDict) -> None:
    """`temporal=2`: the res=64 recipe with a VAE that halves time once, not twice (2x8x8 to 16
    channels: a 17-frame clip -> 9 latent frames, 144 tokens), and half the clips per DiT step
    in the video buckets, so a step holds about the tokens it did (18-21k).

    Why: object permanence has stayed at 0.70-0.75 since the sixth run through changes of width,
    batch, steps, latent noise and captions (runs 6-19). In the steady occlusion scenes (the
    subject neither grows nor shrinks; 80 of 96) the DiT keeps 63-66, the VAE's round trips
    76-78: the latents hold the scene, the DiT does not draw it. A third of its misses there go
    with how it drew the bar: over runs 14-19 the 77 steady scenes whose bar went the captioned
    way at under 0.8x the world's speed (late, doubled or wandering bars) kept 0.66, the other 323
    kept 0.85 (tools/bench/results/occluder_motion_runs14_19.json); most of the rest are subjects
    back as another shape. At 4x temporal compression
    the bar crosses about a token (16 pixels) per latent frame, and its exit and the subject's
    return (frames 13-16) share the last latent frame; at 2x the DiT sees the sweep at twice the
    time steps. Clips per step halve (256 -> 128 in the main bucket): the ninth run's doubling
    (128 -> 256) did not move permanence (0.72 -> 0.71). The VAE's third level runs at 9 frames
    instead of 5 (~13% more of its convolutions' FLOPs).

    Result (the twentieth run, H100, commit c72a03c; tools/bench/results/world_h100_run20.json):
    7 of 10, worse than the recipe on the targets it changed. Permanence 0.60 (the nineteenth
    run 0.73; VAE round trips 0.86 against 0.84), t2v motion 0.58 (0.89: translations drawn on
    crooked paths, graded "bounce", or 45 degrees off), extension backward 2.61x (1.57x), while
    colour, shape, i2v and the round trips held. Its training samples drew motions 0.15, 0.31,
    0.46 at steps 5,000, 10,000, 15,000 (the nineteenth's 0.44, 0.92, 0.83). Kept as an
    argument so that the run can be repeated; the recipe stays at 4x."""
    c.vae.temporal_downsample = (True, False)
    c.dit_train.buckets = (  # [tokens per clip]
        ("17x64x64", 128, 0.45),  # [144]
        ("17x64x96", 96, 0.1),  # [216]
        ("17x96x64", 96, 0.1),  # [216]
        ("33x64x64", 64, 0.15),  # [272]
        ("1x64x64", 1024, 0.2),  # [16] images: unchanged
    )


def _shrink(c: ml_collections.ConfigDict, steps: int, temporal: int = 4) -> None:
    """CPU sizes: 32x32 frames, a micro VAE and DiT, one bucket per stage, 1-2 sample eval sets;
    the VAE compresses time by `temporal` as the recipe chosen does."""
    c.world.resolutions = ((32, 32),)
    c.world.num_frames = (9,)
    c.data.update(num_threads=2, num_workers=0)
    c.vae.update(  # 4x4x4 (or 2x4x4) here: one level fewer compiles faster
        base_channels=8,
        channel_mults=(1, 2, 2),
        temporal_downsample=(True, temporal == 4),
        z_channels=4,
        dtype="float32",
        patch_size=1,
    )
    c.vae_train.update(
        steps=steps,
        max_train_seconds=0,
        buckets=(("9x32x32", 2, 1.0),),
        log_every_steps=max(1, steps // 2),
        checkpoint_every_steps=steps,
        eval_every_steps=0,
        eval_clips=2,
        eval_occlusion_clips=2,
        ssim_weight=0.0,
        profile_steps=(),
    )
    c.text.max_length = 16
    c.dit.update(common.DIT_PRESETS["micro"])
    c.dit.update(in_channels=4, out_channels=4, dtype="float32", attention="xla")
    c.dit_train.update(
        steps=steps,
        max_train_seconds=0,
        buckets=(("9x32x32", 2, 1.0),),
        latent_cache_clips=4 if steps < 10 else 64,
        latent_cache_refresh_steps=0 if steps < 10 else 20,
        latent_cache_refresh_clips=16,
        latent_cache_render_workers=0,  # rendered in the trainer: no processes to start
        image_text_length=0,  # the micro text encoder's 16 tokens
        sample_num_occlusion=2,
        log_every_steps=max(1, steps // 2),
        checkpoint_every_steps=steps,
        profile_steps=(),
    )
    c.sample.update(num_prompts=2, num_frames=9, height=32, width=32, steps=2, batch_size=2)
    c.eval.update(
        # No autoguidance: these stages keep no earlier DiT checkpoint to guide by (the suite's
        # text -> image -> video sampling stays).
        autoguidance=1.0,
        autoguide_step=0,
        t2v_variants=({"steps": 1},),
        variant_sets=("t2v",),
        num_prompts=2,
        num_per_set=1,
        occlusion_prompts=1,
        modes_per_set=1,
        shape="9x32x32",
        sweep_shapes=("9x32x48",),
        steps=2,
        batch_size=2,
        val_clips=2,
        sheet_rows=2,
        gifs=1,
    )
