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
#       files (json, jsonl, log, md, txt, png, gif under 4 MB: contact sheets of 128x128 clips
#       are ~1.2-1.5 MB; the eval's <set>_videos.npz under 40 MB; no checkpoints or compile
#       caches; over RESULTS_LIMIT bytes (55 MB) in all, training-sample pictures and then all
#       pictures are left out) into OUT/results.tgz, in 15 MB parts results.tgz.00, .01, ...
#       when larger (a call returns files of 16 MiB at most, 8 of them, 64 MiB together;
#       `cat results.tgz* | tar xz` unpacks either), WORKDIR/xla_cache into OUT/xla_cache.tgz
#       (in parts likewise; left behind when it does not fit beside the results; a later
#       session's identical programs load from it), WORKDIR/autotune (XLA's kernel choices,
#       world_gpu.sh) into OUT/autotune.tgz, and prints the timeline and the logs' tails.
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
    # A set's videos (the eval's <set>_videos.npz: the 96 generated occlusion clips took 7.3 MB
    # at 17x64x64 in the ninth world run, so up to ~29 MB at 17x128x128) up to 40 MB.
    find . \( -name checkpoints -o -name xla_cache -o -name autotune -o -name code \) -prune -o -type f \
      \( -size -4000k \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.md' \
      -o -name '*.out' -o -name '*.txt' -o -name '*.png' -o -name '*.gif' \) \
      -o -size -40000k -name '*_videos.npz' \) -print >"$out/.pack"
    # Over the limit: leave the training samples' pictures behind (rounds of 48 GIFs), then, if
    # still over, every picture (the evaluation's contact sheets and GIFs go last).
    limit_bytes=${RESULTS_LIMIT:-55000000}
    for drop in '^$' '/samples/.*\.\(png\|gif\)$' '\.png$\|\.gif$'; do
      grep -v -- "$drop" "$out/.pack" | tar czf "$out/results.tgz" -T -
      (( $(stat -c %s "$out/results.tgz") > limit_bytes )) || break
    done
    rm -f "$out/.pack"
    # in_parts FILE: FILE in 15 MB parts FILE.00, FILE.01, ... when it is larger than one part.
    in_parts() {
      (( $(stat -c %s "$1") > 15000000 )) || return 0
      split -b 15000000 -d "$1" "$1." && rm "$1"
    }
    results_size=$(stat -c %s "$out/results.tgz")
    in_parts "$out/results.tgz"
    if [[ -d xla_cache ]]; then
      tar czf "$out/xla_cache.tgz" xla_cache
      size=$(stat -c %s "$out/xla_cache.tgz")
      # 8 files and 64 MiB a call: the results' parts, autotune.tgz, then what is left.
      parts=$(( 7 - $(ls "$out" | grep -c '^results\.tgz') ))
      room=$(( 62000000 - results_size ))
      if (( size > room || size > parts * 15000000 )); then
        rm "$out/xla_cache.tgz"
        echo "xla_cache.tgz: $size bytes, no room beside the results: left behind"
      else
        in_parts "$out/xla_cache.tgz"
      fi
    fi
    if [[ -d autotune ]]; then tar czf "$out/autotune.tgz" autotune; fi
    echo "== timeline"; cat timeline.log 2>/dev/null
    for f in *.log; do [[ -f $f ]] && { echo "== $f"; grep -v "^[IW][0-9]" "$f" | tail -6; }; done
    echo "== run.out"; tail -15 run.out 2>/dev/null || echo "(no run.out)"
    ;;
  *) echo "unknown verb $verb; expected start or poll" >&2; exit 2 ;;
esac
