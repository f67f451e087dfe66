# Stage time caps for a run that must end by a wall-clock deadline (sourced by world_gpu.sh).
#
# A lent GPU gives a session a fixed device time, and a slow machine start spends part of it:
# the twelfth world run lost its evaluation to that. With DEADLINE set (unix seconds by which
# the whole run, evaluation and report included, must be done), each training stage gets
# `max_train_seconds` from what is left, EVAL_RESERVE seconds (default 150) kept back for the
# evaluation, its report and the last poll. A stage stopped by its cap saves a checkpoint at a
# log step, and the next stage starts from it (its summary says stopped_early).
#
#   stage_cap FRACTION   prints FRACTION x (DEADLINE - now - EVAL_RESERVE) in whole seconds,
#                        at least 60; prints nothing when DEADLINE is unset (no cap added).
#   cap_flag PREFIX FRACTION   prints --config.PREFIX.max_train_seconds=CAP, or nothing.
stage_cap() {
  [[ -n "${DEADLINE:-}" ]] || return 0
  local left=$(( DEADLINE - $(date +%s) - ${EVAL_RESERVE:-150} ))
  awk -v left="$left" -v f="$1" 'BEGIN { c = int(left * f); print (c < 60 ? 60 : c) }'
}

cap_flag() {
  local cap
  cap=$(stage_cap "$2")
  [[ -z "$cap" ]] || echo "--config.$1.max_train_seconds=$cap"
}
