#!/usr/bin/env bash
# The throughput benchmarks that need an accelerator, on a borrowed GPU machine
# that has JAX (with CUDA) and Python 3.12 but no network.
#
#   launch/accelerator_benchmarks.sh fetch [--dry-run]
#       here, with network to PyPI: downloads into a fresh .whl/ the Python
#       3.12 wheels of the pure-Python packages rtrl_jax needs that such a
#       machine lacks (~9 MB; .whl/ is git-ignored, carry it to the machine;
#       emptied first, so a changed pin leaves no second version behind)
#   launch/accelerator_benchmarks.sh run [--dry-run] [--quick] [--out DIR]
#       there: installs .whl/ into /tmp/site (no network, no deps), prints
#       the devices, checks and times the past-gradient contraction
#       (benchmark_cells --contraction, B = 1024, N = 512, D = 257: no loop
#       over the batch off CPU, same sum as float64; DIR/contraction/), runs
#       experiments/benchmark_anakin.py at the sizes of docs/ANAKIN.md with
#       B = 64 (as on CPU) and B = 1024, writing DIR/b64/benchmark_anakin.csv
#       and DIR/b1024/benchmark_anakin.csv, then checks the scale planner
#       (experiments/plan_scale.py --device=detect) against both CSVs, the
#       second with the device compiler's memory sizes (--memory=compiled)
#       (DIR: $OUT if set, else runs/accelerator_benchmarks); everything it
#       prints (the devices, JAX's version, the tables) also goes to
#       DIR/log.txt, so a run cut short still brings back what it measured.
#       A failing step does not stop the later ones; the script then ends
#       with exit status 1 and lists the steps that failed
#
#   --dry-run   print the commands, run nothing
#   --quick     run: the benchmark's seconds-long --quick sizes (a rehearsal
#               of the whole script, e.g. on a CPU with Python 3.12)
# Environment: PYTHON (default python3; `fetch` prefers .venv/bin/python).
# The wheels' versions are constraints.txt's pins (tests/launch_test.py checks that
# they agree) plus those of their small dependencies; the machine's own JAX
# (0.11 on the machines lent so far) is used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/flags.sh

WHEELS=(
  ml-collections==1.1.0 rlax==0.1.9 distrax==0.1.9
  tfp-nightly==0.26.0.dev20261027 gymnax==1.0.1 gymnasium==1.3.0
  farama-notifications==0.0.6 dm-haiku==0.0.17 jmp==0.0.4
  tensorboardX==2.6.5 dm-env==1.6 dm-tree==0.1.10 decorator==5.3.1
  gast==0.7.0
)
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"

MODE="${1:-}"
if [[ "$MODE" != fetch && "$MODE" != run ]]; then
  echo "accelerator_benchmarks.sh: the first argument must be 'fetch' or 'run', got '$MODE'" >&2
  exit 2
fi
shift
DRY_RUN=0; QUICK=0; OUT_DIR="${OUT:-runs/accelerator_benchmarks}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --quick) QUICK=1; shift ;;
    --out) need_value accelerator_benchmarks.sh "$@"; OUT_DIR="$2"; shift 2 ;;
    *) echo "accelerator_benchmarks.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

commands=()
case "$MODE" in
  fetch)
    if [[ -z "${PYTHON:-}" ]]; then
      if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
    fi
    commands+=("rm -rf .whl")
    commands+=("$PYTHON -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS -d .whl ${WHEELS[*]}")
    ;;
  run)
    PYTHON="${PYTHON:-python3}"
    commands+=("$PYTHON -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl")
    commands+=("nvidia-smi -L || true")
    commands+=("PYTHONPATH=/tmp/site:$PWD $PYTHON -c 'import jax; print(jax.__version__, jax.devices())'")
    if [[ "$QUICK" -eq 1 ]]; then
      commands+=("PYTHONPATH=/tmp/site:$PWD $PYTHON -m experiments.benchmark_anakin --quick --out_dir=$OUT_DIR/quick")
    else
      commands+=("PYTHONPATH=/tmp/site:$PWD $PYTHON -m experiments.benchmark_cells --contraction --batch=1024 --hidden=512 --input_size=257 --out_dir=$OUT_DIR/contraction")
      for envs in 64 1024; do
        commands+=("PYTHONPATH=/tmp/site:$PWD $PYTHON -m experiments.benchmark_anakin --hidden=64,256,512 --encoder_features=32,32,256 --num_envs=$envs --out_dir=$OUT_DIR/b$envs")
      done
      # B = 1024 also prints the device compiler's buffer sizes (--memory=compiled).
      commands+=("PYTHONPATH=/tmp/site:$PWD $PYTHON -m experiments.plan_scale --hidden=512 --input=257 --envs_per_device=64 --unroll=5 --device=detect --check_csv=$OUT_DIR/b64/benchmark_anakin.csv")
      commands+=("PYTHONPATH=/tmp/site:$PWD $PYTHON -m experiments.plan_scale --hidden=512 --input=257 --envs_per_device=1024 --unroll=5 --device=detect --check_csv=$OUT_DIR/b1024/benchmark_anakin.csv --memory=compiled")
    fi
    ;;
esac

if [[ "$DRY_RUN" -eq 1 ]]; then
  printf '%s\n' "${commands[@]}"
  exit 0
fi
if [[ "$MODE" == run && ! -d .whl ]]; then
  echo "accelerator_benchmarks.sh: no .whl/ here; run 'launch/accelerator_benchmarks.sh fetch' where PyPI is reachable and carry .whl" >&2
  exit 2
fi
log=/dev/null
if [[ "$MODE" == run ]]; then
  mkdir -p "$OUT_DIR"
  log="$OUT_DIR/log.txt"
fi
failed=()
for command in "${commands[@]}"; do
  echo "+ $command" | tee -a "$log"
  bash -c "$command" 2>&1 | tee -a "$log" || failed+=("$command")
done
if [[ ${#failed[@]} -gt 0 ]]; then
  printf 'FAILED: %s\n' "${failed[@]}" | tee -a "$log" >&2
  exit 1
fi
