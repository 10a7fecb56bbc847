#!/usr/bin/env bash
# Run a training launcher so that a preemption becomes a checkpoint and a requeue.
#
#   bash jobs/preemptible.sh OUTPUT_DIR LAUNCHER [ARGS...]      # e.g. torchrun ... student/train.py ...
#   source jobs/preemptible.sh; run_preemptible OUTPUT_DIR LAUNCHER [ARGS...]   # from a batch script
#
# SIGTERM or SIGUSR1 to this shell is forwarded to the launcher, which must pass it on to the
# training processes (torchrun: --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1, and a
# --shutdown-timeout longer than a step plus a checkpoint); they finish the step, checkpoint it and
# leave OUTPUT_DIR/preempted.json. Launchers report a signalled run as failed whatever it did, so
# the marker decides. Exit status: 0 when the run finished, 3 when it stopped on a signal with a
# checkpoint (requeue it: the same command resumes there), else the launcher's own.
#
# Sourced, the traps are the batch shell's own: SLURM's `--signal=B:USR1@SECONDS` signals only the
# batch shell, which a child script would never hear.

PREEMPTED_STATUS=3

run_preemptible() {
  local out="$1"
  shift
  "$@" &
  local launcher=$!
  trap 'kill -USR1 "$launcher" 2>/dev/null' USR1
  trap 'kill -TERM "$launcher" 2>/dev/null' TERM
  local status=0
  wait "$launcher" || status=$?
  # A trapped signal ends `wait` early; wait again until the launcher itself has exited.
  while kill -0 "$launcher" 2>/dev/null; do
    status=0
    wait "$launcher" || status=$?
  done
  trap - USR1 TERM
  if [ -f "$out/preempted.json" ]; then
    echo "preempted: $(tr -d '\n' < "$out/preempted.json")" >&2
    return "$PREEMPTED_STATUS"
  fi
  return "$status"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -u
  if [ $# -lt 2 ]; then
    echo "usage: $0 OUTPUT_DIR LAUNCHER [ARGS...]" >&2
    exit 2
  fi
  run_preemptible "$@"
  exit $?
fi
