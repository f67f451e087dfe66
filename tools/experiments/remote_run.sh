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
#   remote_run.sh poll_all LIMIT MARKER OUT WORKDIR [WORKDIR...]
#       several runs at once, e.g. one per GPU of a multi-GPU machine (each started with its own
#       CUDA_VISIBLE_DEVICES): waits up to LIMIT seconds for MARKER in every WORKDIR's timeline,
#       then packs each run as `poll` does into OUT/<WORKDIR's name>/results.tgz (parts likewise),
#       its autotune directory inside, within RESULTS_LIMIT / N bytes (62 MB / N at most, so the
#       N runs fit one call's 8 files and 64 MiB), leaving behind the training samples'
#       pictures, then the eval's videos (<set>_videos.npz), then every picture, as needed. No
#       compile cache: runs made side by side need none to repeat each other.
set -uo pipefail
verb=${1:?usage: remote_run.sh start|poll|poll_all ...}
shift

# wait_for LIMIT MARKER WORKDIR...: until MARKER is in every WORKDIR/timeline.log, LIMIT s at most.
wait_for() {
  local limit=$1 marker=$2 t0 w pending
  shift 2
  t0=$(date +%s)
  while (( $(date +%s) - t0 < limit )); do
    pending=0
    for w in "$@"; do grep -q -- "$marker" "$w/timeline.log" 2>/dev/null || pending=1; done
    (( pending )) || return 0
    sleep 10
  done
}

# in_parts FILE: FILE in 15 MB parts FILE.00, FILE.01, ... when it is larger than one part.
in_parts() {
  (( $(stat -c %s "$1") > 15000000 )) || return 0
  split -b 15000000 -d "$1" "$1." && rm "$1"
}

# pack_results WORKDIR OUT LIMIT_BYTES WITH_AUTOTUNE DROP...: the run's small result files
# (json, jsonl, log, md, txt, png, gif under 4 MB; <set>_videos.npz under 40 MB: the 96 generated
# occlusion clips took 7.3 MB at 17x64x64 in the ninth world run, so up to ~29 MB at 17x128x128;
# no checkpoints, compile caches or code) into OUT/results.tgz. Over LIMIT_BYTES, each DROP (a
# grep pattern of paths to leave behind) is tried in turn until one fits. WITH_AUTOTUNE=1 packs
# WORKDIR/autotune too. Prints the archive's size.
pack_results() {
  local workdir=$1 out=$2 limit_bytes=$3 autotune=$4 drop
  shift 4
  (
    cd "$workdir" || exit 3
    find . \( -name checkpoints -o -name xla_cache -o -name autotune -o -name code \) -prune \
      -o -type f \( -size -4000k \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' \
      -o -name '*.md' -o -name '*.out' -o -name '*.txt' -o -name '*.png' -o -name '*.gif' \) \
      -o -size -40000k -name '*_videos.npz' \) -print >"$out/.pack"
    if [[ "$autotune" == 1 && -d autotune ]]; then echo ./autotune >>"$out/.pack"; fi
    for drop in "$@"; do
      grep -v -- "$drop" "$out/.pack" | tar czf "$out/results.tgz" -T -
      (( $(stat -c %s "$out/results.tgz") > limit_bytes )) || break
    done
    rm -f "$out/.pack"
  ) || return
  stat -c %s "$out/results.tgz"
}

# show WORKDIR: the run's timeline and the tails of its logs.
show() {
  local f
  echo "== timeline"; cat "$1/timeline.log" 2>/dev/null
  for f in "$1"/*.log; do
    [[ -f $f ]] && { echo "== $(basename "$f")"; grep -v "^[IW][0-9]" "$f" | tail -6; }
  done
  echo "== run.out"; tail -15 "$1/run.out" 2>/dev/null || echo "(no run.out)"
}

samples_pictures='/samples/.*\.\(png\|gif\)$'
pictures='\.png$\|\.gif$'
case "$verb" in
  start)
    workdir=${1:?usage: remote_run.sh start WORKDIR CMD [ARGS...]}
    shift
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
    workdir=${1:?usage: remote_run.sh poll WORKDIR LIMIT MARKER OUT}
    limit=${2:?LIMIT}; marker=${3:?MARKER}; out=${4:?OUT}
    wait_for "$limit" "$marker" "$workdir"
    # Over the limit: leave the training samples' pictures behind (rounds of 48 GIFs), then, if
    # still over, every picture (the evaluation's contact sheets and GIFs go last).
    results_size=$(pack_results "$workdir" "$out" "${RESULTS_LIMIT:-55000000}" 0 \
      '^$' "$samples_pictures" "$pictures") || exit 3
    in_parts "$out/results.tgz"
    cd "$workdir" || exit 3
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
    show "$workdir"
    ;;
  poll_all)
    limit=${1:?usage: remote_run.sh poll_all LIMIT MARKER OUT WORKDIR...}
    marker=${2:?MARKER}; out=${3:?OUT}
    shift 3
    (( $# >= 1 )) || { echo "usage: remote_run.sh poll_all LIMIT MARKER OUT WORKDIR..." >&2; exit 2; }
    names=$(for w in "$@"; do basename "$w"; done)
    if [[ $(sort <<<"$names" | uniq -d) ]]; then
      echo "poll_all: the workdirs' names must differ (each is a folder of OUT)" >&2; exit 2
    fi
    wait_for "$limit" "$marker" "$@"
    each=$(( ${RESULTS_LIMIT:-62000000} / $# ))
    (( each <= 62000000 / $# )) || each=$(( 62000000 / $# ))
    for w in "$@"; do
      mkdir -p "$out/$(basename "$w")"
      pack_results "$w" "$out/$(basename "$w")" "$each" 1 '^$' "$samples_pictures" \
        "$samples_pictures\|_videos\.npz$" "$pictures\|_videos\.npz$" >/dev/null
      in_parts "$out/$(basename "$w")/results.tgz"
      echo "######## $w"
      show "$w"
    done
    ;;
  *) echo "unknown verb $verb; expected start, poll or poll_all" >&2; exit 2 ;;
esac
