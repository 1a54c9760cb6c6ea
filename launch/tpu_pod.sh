#!/usr/bin/env bash
# Sebulba on a Cloud TPU-VM pod: the same command on every worker through
# `gcloud compute tpus tpu-vm ssh --worker=all`; jax.distributed.initialize
# detects the pod (--distributed).
#
#   launch/tpu_pod.sh [--dry-run] [--setup] --tpu NAME --zone ZONE \
#       [--project P] [--repo URL] [--dir DIR] [--] <flags for r2ac_sebulba>
#
#   --setup    first clone --repo into --dir on every worker and install
#              rtrl_jax with envpool and jax[tpu] into DIR/.venv
#   --dry-run  print the gcloud commands, run nothing
# --workdir should be a gs:// bucket or a shared disk for checkpoints.
set -euo pipefail

DRY_RUN=0; SETUP=0; TPU=""; ZONE=""; PROJECT=""; DIR="rtrl_jax"
REPO="${RTRL_JAX_REPO:-https://github.com/your-org/rtrl_jax.git}"
source "$(dirname "$0")/flags.sh"
value() { need_value tpu_pod.sh "$@"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --setup) SETUP=1; shift ;;
    --tpu) value "$@"; TPU="$2"; shift 2 ;;
    --zone) value "$@"; ZONE="$2"; shift 2 ;;
    --project) value "$@"; PROJECT="$2"; shift 2 ;;
    --repo) value "$@"; REPO="$2"; shift 2 ;;
    --dir) value "$@"; DIR="$2"; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [[ -z "$TPU" || -z "$ZONE" ]]; then
  echo "error: --tpu and --zone are required" >&2
  exit 2
fi
ssh=(gcloud compute tpus tpu-vm ssh "$TPU" "--zone=$ZONE" ${PROJECT:+"--project=$PROJECT"} --worker=all)
# What each worker's shell runs; the forwarded flags are shell-quoted so they
# reach r2ac_sebulba exactly as given (none: nothing, not an empty argument).
dir=$(printf '%q' "$DIR")
setup="git clone $(printf '%q' "$REPO") $dir || (cd $dir && git pull); cd $dir && python3 -m venv .venv && .venv/bin/pip install -q -e '.[envs]' 'jax[tpu]'"
train="cd $dir && .venv/bin/python -m experiments.r2ac_sebulba --distributed$(shell_words "$@")"

remote=()
if [[ "$SETUP" -eq 1 ]]; then
  remote+=("$setup")
fi
remote+=("$train")

for command in "${remote[@]}"; do
  if [[ "$DRY_RUN" -eq 1 ]]; then
    printf '%q ' "${ssh[@]}" "--command=$command"; echo
  else
    "${ssh[@]}" "--command=$command"
  fi
done
