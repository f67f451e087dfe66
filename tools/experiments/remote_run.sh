#!/usr/bin/env bash
# A long run on a machine reached by time-limited calls (e.g. a lent GPU where one call may last
# 10 minutes and the machine stays warm between calls): start it detached, then poll it.
#
#   remote_run.sh start WORKDIR CMD [ARGS...]
#       copies sora_jax/, configs/, tools/ and pyproject.toml to WORKDIR/code (so a checkout
#       re-synced by the next call does not change the running code), unpacks
#       XLA_CACHE_TGZ and AUTOTUNE_TGZ (if set and present; a tgz returned in parts,
#       NAME.00, NAME.01, ..., is joined) into WORKDIR, and runs CMD from
#       WORKDIR/code detached
#       (log: WORKDIR/run.out). CMD writes WORKDIR/timeline.log, e.g.
#       tools/experiments/world_gpu.sh WORKDIR "" --config.text.path=DIR
#   remote_run.sh poll WORKDIR LIMIT MARKER OUT
#       waits up to LIMIT seconds for MARKER in WORKDIR/timeline.log, then packs the small result
#       files (json, jsonl, log, md, txt, png, gif under 1.5 MB, the eval's <set>_videos.npz
#       under 12 MB; no checkpoints or compile caches; over 15 MB in all, training-sample
#       pictures and then all pictures are left out) into
#       OUT/results.tgz, WORKDIR/xla_cache into OUT/xla_cache.tgz (in 15 MB parts
#       xla_cache.tgz.00, .01, ... when larger; at most 5, since a call returns 8 files)
#       (a later session's identical programs load from it), WORKDIR/autotune (XLA's kernel
#       choices, world_gpu.sh) into OUT/autotune.tgz, and prints the timeline and the logs' tails.
set -uo pipefail
verb=${1:?usage: remote_run.sh start|poll WORKDIR ...}
workdir=${2:?usage: remote_run.sh start|poll WORKDIR ...}
shift 2
case "$verb" in
  start)
    (( $# >= 1 )) || { echo "usage: remote_run.sh start WORKDIR CMD [ARGS...]" >&2; exit 2; }
    mkdir -p "$workdir" && rm -rf "$workdir/code" && mkdir -p "$workdir/code" || exit 1
    cp -r sora_jax configs tools pyproject.toml "$workdir/code/" || exit 1
    for tgz in "${XLA_CACHE_TGZ:-}" "${AUTOTUNE_TGZ:-}"; do
      if [[ -n "$tgz" && -f "$tgz" ]]; then
        tar xzf "$tgz" -C "$workdir" || echo "could not unpack $tgz" >&2
      elif [[ -n "$tgz" && -f "$tgz.00" ]]; then
        cat "$tgz".[0-9][0-9] | tar xz -C "$workdir" || echo "could not unpack $tgz.NN" >&2
      fi
    done
    cd "$workdir/code" && PYTHONPATH="$workdir/code${PYTHONPATH:+:$PYTHONPATH}" \
      nohup setsid "$@" >"$workdir/run.out" 2>&1 </dev/null &
    echo "started: $* (log $workdir/run.out)"
    ;;
  poll)
    limit=${1:?LIMIT}; marker=${2:?MARKER}; out=${3:?OUT}
    t0=$(date +%s)
    while (( $(date +%s) - t0 < limit )); do
      grep -q -- "$marker" "$workdir/timeline.log" 2>/dev/null && break
      sleep 10
    done
    cd "$workdir" || exit 3
    # A set's videos (the eval's <set>_videos.npz: 32 generated occlusion clips took 2.9 MB in
    # the fourth world run, so the 96 of the suite now ~8.6 MB) up to 12 MB.
    find . \( -name checkpoints -o -name xla_cache -o -name autotune -o -name code \) -prune -o -type f \
      \( -size -1500k \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.md' \
      -o -name '*.out' -o -name '*.txt' -o -name '*.png' -o -name '*.gif' \) \
      -o -size -12000k -name '*_videos.npz' \) -print >"$out/.pack"
    # Over 15 MB: leave the training samples' pictures behind (seven rounds of 48 GIFs), then,
    # if still over, every picture (the evaluation's contact sheets and GIFs go last).
    for drop in '^$' '/samples/.*\.\(png\|gif\)$' '\.png$\|\.gif$'; do
      grep -v -- "$drop" "$out/.pack" | tar czf "$out/results.tgz" -T -
      (( $(stat -c %s "$out/results.tgz") > 15000000 )) || break
    done
    rm -f "$out/.pack"
    if [[ -d xla_cache ]]; then
      tar czf "$out/xla_cache.tgz" xla_cache
      size=$(stat -c %s "$out/xla_cache.tgz")
      if (( size > 75000000 )); then
        rm "$out/xla_cache.tgz"; echo "xla_cache.tgz: $size bytes, over 5 parts: left behind"
      elif (( size > 15000000 )); then
        split -b 15000000 -d "$out/xla_cache.tgz" "$out/xla_cache.tgz." && rm "$out/xla_cache.tgz"
      fi
    fi
    if [[ -d autotune ]]; then tar czf "$out/autotune.tgz" autotune; fi
    echo "== timeline"; cat timeline.log 2>/dev/null
    for f in *.log; do [[ -f $f ]] && { echo "== $f"; grep -v "^[IW][0-9]" "$f" | tail -6; }; done
    echo "== run.out"; tail -15 run.out 2>/dev/null || echo "(no run.out)"
    ;;
  *) echo "unknown verb $verb; expected start or poll" >&2; exit 2 ;;
esac
