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
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --setup) SETUP=1; shift ;;
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --repo) REPO="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [[ -z "$TPU" || -z "$ZONE" ]]; then
  echo "error: --tpu and --zone are required" >&2
  exit 2
fi
ssh_base="gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE${PROJECT:+ --project=$PROJECT} --worker=all"
setup="git clone $REPO $DIR || (cd $DIR && git pull); cd $DIR && python3 -m venv .venv && .venv/bin/pip install -q -e '.[envs]' 'jax[tpu]'"
train="cd $DIR && .venv/bin/python -m experiments.r2ac_sebulba --distributed $*"

commands=()
if [[ "$SETUP" -eq 1 ]]; then
  commands+=("$ssh_base --command=\"$setup\"")
fi
commands+=("$ssh_base --command=\"$train\"")

if [[ "$DRY_RUN" -eq 1 ]]; then
  printf '%s\n' "${commands[@]}"
  exit 0
fi
for command in "${commands[@]}"; do
  eval "$command"
done
