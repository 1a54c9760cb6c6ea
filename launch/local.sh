#!/usr/bin/env bash
# Sebulba on this machine: one process, or N processes joined by
# jax.distributed on 127.0.0.1 (a multi-host rehearsal with CPU devices).
#
#   launch/local.sh [--dry-run] [--processes N] [--fake-devices D] \
#                   [--port P] [--] <flags for experiments.r2ac_sebulba>
#
#   --dry-run         print the commands, run nothing
#   --processes N     N processes (default 1); N > 1 adds --coordinator_address
#                     127.0.0.1:P --num_processes N --process_id i (all
#                     share --workdir; process 0 writes the logs)
#   --fake-devices D  XLA_FLAGS=--xla_force_host_platform_device_count=D
#                     (D CPU devices per process)
#   --port P          coordinator port (default 12355)
# Environment: PYTHON (default .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0; PROCESSES=1; FAKE_DEVICES=""; PORT=12355
source launch/flags.sh
value() { need_value local.sh "$@"; }
count() { need_positive_int local.sh "$@"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --processes) value "$@"; count "$1" "$2"; PROCESSES="$2"; shift 2 ;;
    --fake-devices) value "$@"; count "$1" "$2"; FAKE_DEVICES="$2"; shift 2 ;;
    --port) value "$@"; count "$1" "$2" 65535; PORT="$2"; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

ENV_PREFIX=""
if [[ -n "$FAKE_DEVICES" ]]; then
  ENV_PREFIX="JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$FAKE_DEVICES "
fi

# The flags go on exactly as given: each is shell-quoted into the command
# line (spaces, quotes, braces and parentheses survive `bash -c`); no flags
# add nothing, not an empty argument.
FORWARDED=$(shell_words "$@")
commands=()
if [[ "$PROCESSES" -eq 1 ]]; then
  commands+=("${ENV_PREFIX}$PYTHON -m experiments.r2ac_sebulba${FORWARDED}")
else
  for ((i = 0; i < PROCESSES; i++)); do
    commands+=("${ENV_PREFIX}$PYTHON -m experiments.r2ac_sebulba${FORWARDED} --coordinator_address=127.0.0.1:$PORT --num_processes=$PROCESSES --process_id=$i")
  done
fi

if [[ "$DRY_RUN" -eq 1 ]]; then
  printf '%s\n' "${commands[@]}"
  exit 0
fi
pids=()
for command in "${commands[@]}"; do
  bash -c "$command" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
