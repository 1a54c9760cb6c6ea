r"""The reproduction study: does untruncated RTRL beat TBPTT(M) when memory spans exceed M?

  python -m experiments.study                     # the whole study (hours on 2 CPU cores)
  python -m experiments.study --quick             # a smoke run of the pipeline (~2 min)
  python -m experiments.study --report_only --report_dir=docs/results

Runs every (task, system, seed) of experiments/configs/study.py as one R2AC
Anakin run (`experiments.r2ac_training.run`) in
<workdir>/runs/<task>/<system>/seed<k>/, logging with every greedy
evaluation the gradient-alignment probe (rtrl_jax/agents/alignment.py) and
the norms of the sensitivities the actor carries. Each finished run then gets
`--config.final_eval_episodes` greedy episodes (final_eval.json).

Finished runs are skipped and unfinished ones resume from their last
checkpoint, so the same command continues a killed study. `--workers=2` runs
the grid in two processes (one per core). At the end the report is rebuilt
from the run folders alone: <report_dir>/report.md (tables, with the command
and commit), summary.csv and the plots.
"""

import os
import re
import subprocess
import sys
import time

import jax
from absl import app, flags

from experiments import r2ac_training
from experiments import study_report
from experiments.configs import study as study_configs
from rtrl_jax import evaluation
from rtrl_jax import experiment
from rtrl_jax.experiment.run_logger import write_json
from rtrl_jax.agents import alignment

_CONFIG = experiment.cli.define_config_flag(
    "experiments/configs/study.py",
    "The study grid (experiments/configs/study.py[:quick|paper]).")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Shorthand for --config=experiments/configs/study.py:quick "
    "(and the default --workdir runs/study_quick).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Study folder (default runs/study or runs/study_quick).")
_REPORT_DIR = flags.DEFINE_string(
    "report_dir", None, "Where report.md, summary.csv and the plots go "
    "(default: --workdir).")
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes running the grid.")
_SHARD = flags.DEFINE_string(
    "shard", None, "k/n: run only runs k, k+n, ... (set by --workers).")
_ONLY = flags.DEFINE_list(
    "only", [], "Run only these tasks or systems (names from the config).")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Rebuild the report from the run folders; no runs.")

FINAL_EVAL = "final_eval.json"
FINAL_EVAL_SEED = 10_000     # evaluation episodes differ from training's


def grid(study, only=()):
  """[(task, system, seed)] in a fixed order, filtered by `only`."""
  unknown = sorted(set(only) - set(study.tasks) - set(study.systems))
  if unknown:
    raise experiment.ConfigError(
        f"--only: unknown {unknown}; tasks {sorted(study.tasks)}, systems "
        f"{sorted(study.systems)}")
  keep = lambda name, names: not (set(only) & set(names)) or name in only
  return [(task, system, seed)
          for seed in range(study.seeds)
          for task in study_configs.ordered_tasks(study)
          if keep(task, study.tasks)
          for system in study_configs.ordered_systems(study)
          if keep(system, study.systems)]


def run_dir(workdir, task, system, seed):
  return os.path.join(workdir, "runs", task, system, f"seed{seed}")


def make_probe(study, task_name):
  """make_extra_evaluation for r2ac_training.run: alignment + sensitivity norms.

  Every run gets the fixed-θ probe; RTRL runs also the in-training probe
  (stale sensitivities, the run's own optimizer state and learning rate).
  """
  def make(config, train):
    if config.gradient == "bptt":   # unrolls restart episodes: no stream
      return lambda runner: {}
    # At least two unrolls, so that TBPTT has a boundary to cut at.
    unrolls = max(2, -(-study.tasks[task_name].probe_steps
                       // config.unroll_length))
    probe = alignment.make_alignment_probe(config, train, unrolls)
    training_probe = (
        alignment.make_training_alignment_probe(config, train, unrolls)
        if config.gradient == "rtrl" else None)
    carried_norms = jax.jit(alignment.per_env_norm)

    def evaluate(runner):
      key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 2),
                               runner.update)
      out = probe(runner.params, key)
      if training_probe is not None:
        out.update(training_probe(runner.params, runner.opt_state, key))
      sensitivities = runner.core_state.sensitivities
      if sensitivities is not None:
        norms = carried_norms(sensitivities)
        out["sens/carried_norm_mean"] = norms.mean()
        out["sens/carried_norm_max"] = norms.max()
      return out
    return evaluate
  return make


def final_evaluation(directory, episodes, seed):
  """Greedy and sampled returns of the run's last checkpoint, `episodes` each."""
  _, train, runner, metadata = evaluation.restore_run(directory)
  result = {"call": metadata.get("call"), "update": int(runner.update)}
  for actions in ("greedy", "sampled"):
    summary = evaluation.evaluate_policy(
        train.agent, train.env, runner.params, seeds=[FINAL_EVAL_SEED + seed],
        episodes_per_seed=episodes, greedy=actions == "greedy")
    result.update({f"{actions}_mean": summary.mean,
                   f"{actions}_returns": summary.returns[0].tolist(),
                   f"{actions}_mean_length": float(summary.lengths.mean())})
  write_json(os.path.join(directory, FINAL_EVAL), result)
  return result


def record_divergence(directory, error):
  """A diverged run's final_eval.json: NaN returns, so the report counts the
  seed as missing, and the study moves on instead of stopping (a rerun would
  diverge again from the same checkpoint and batches)."""
  nan = float("nan")
  result = {"status": "diverged", "error": str(error), "call": None,
            "update": None}
  for actions in ("greedy", "sampled"):
    result.update({f"{actions}_mean": nan, f"{actions}_returns": [],
                   f"{actions}_mean_length": nan})
  os.makedirs(directory, exist_ok=True)
  write_json(os.path.join(directory, FINAL_EVAL), result)


def run_grid(study, workdir, runs, label=""):
  started = time.time()
  for index, (task, system, seed) in enumerate(runs, 1):
    directory = run_dir(workdir, task, system, seed)
    name = f"{task}/{system}/seed{seed}"
    if os.path.exists(os.path.join(directory, FINAL_EVAL)):
      print(f"{label}[{index}/{len(runs)}] {name}: done before", flush=True)
      continue
    config = study_configs.run_config(study, task, system, seed)
    run_started = time.time()
    try:
      results = r2ac_training.run(config, directory, resume=True,
                                  make_extra_evaluation=make_probe(study,
                                                                   task))
    except experiment.NonFiniteLossError as error:
      record_divergence(directory, error)
      print(f"{label}[{index}/{len(runs)}] {name}: diverged ({error}); "
            "counted as missing in the report", flush=True)
      continue
    if results["status"] == "preempted":
      sys.exit(f"{label}preempted in {name}; rerun the same command to "
               f"continue")
    final = final_evaluation(directory, study.final_eval_episodes, seed)
    jax.clear_caches()   # every run compiles its own programs
    elapsed = time.time() - started
    print(f"{label}[{index}/{len(runs)}] {name}: greedy return "
          f"{final['greedy_mean']:.3f} over {study.final_eval_episodes} "
          f"episodes, {results['frames']:.0f} frames, "
          f"{time.time() - run_started:.0f} s (total {elapsed / 60:.1f} min)",
          flush=True)


def parse_shard(value):
  """(k, n) of --shard=k/n, 0 <= k < n; ValueError naming the flag."""
  match = re.fullmatch(r"(\d+)/(\d+)", value)
  if not match or not int(match[1]) < int(match[2]):
    raise ValueError(f"--shard: must be k/n with 0 <= k < n, got {value!r}")
  return int(match[1]), int(match[2])


def run_workers(workers, argv):
  """Runs this script in `workers` processes, each on every n-th run."""
  if "--workers" in argv:
    sys.exit("error: --workers: write --workers=N")
  passed = [arg for arg in argv[1:] if not arg.startswith("--workers=")]
  processes = [subprocess.Popen(
      [sys.executable, "-m", "experiments.study", *passed,
       f"--shard={k}/{workers}"]) for k in range(workers)]
  codes = [process.wait() for process in processes]
  failed = [k for k, code in enumerate(codes) if code]
  if failed:
    sys.exit(f"error: worker(s) {failed} failed (exit {[codes[k] for k in failed]})"
             "; rerun the same command to continue")


def main(argv):
  experiment.cli.start_main(argv)
  if _QUICK.value and flags.FLAGS["config"].present:
    sys.exit("error: --quick: give either --quick or --config, not both")
  study = study_configs.quick() if _QUICK.value else _CONFIG.value
  workdir = _WORKDIR.value or ("runs/study_quick" if _QUICK.value
                               else "runs/study")
  if _WORKERS.value < 1:
    sys.exit(f"error: --workers: must be >= 1, got {_WORKERS.value}")
  try:
    runs = grid(study, _ONLY.value)
    if not _REPORT_ONLY.value:
      if _SHARD.value:
        shard, count = parse_shard(_SHARD.value)
        run_grid(study, workdir, runs[shard::count], label=f"worker {shard}: ")
        return
      if _WORKERS.value > 1:
        run_workers(_WORKERS.value, sys.argv)
      else:
        run_grid(study, workdir, runs)
    command = " ".join(["python -m experiments.study", *sys.argv[1:]])
    report = study_report.write_report(
        study, workdir, _REPORT_DIR.value or workdir, runs, run_dir,
        command=command)
  except (experiment.ConfigError, experiment.NonFiniteLossError,
          ValueError) as error:
    sys.exit(f"error: {error}")
  print(f"report: {report}")


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
