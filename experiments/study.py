r"""The reproduction study: does untruncated RTRL(M) beat TBPTT(M) when memory spans exceed M?

  python -m experiments.study --workers=2 --report_dir=docs/results  # = make study
  python -m experiments.study --quick                   # the pipeline in ~2 min
  python -m experiments.study --report_only --report_dir=docs/results

Runs the cells of experiments/configs/study.py (the hypothesis and the three
stages are written there): first the learning-rate tuning stage, then, at
each system's tuned rate, the main grid and the controls. A cell trains all
its seeds in one jitted program (`r2ac_training.train_seeds`) and writes
<workdir>/cells/<stage>/<task>/<system>[__<control>]/lr<rate>/result.json:
the per-seed training curves, the final sampled returns (the primary
number, `eval_episodes` per seed) and greedy returns, and the wall time
per frame.

Resumable: a cell with a result.json is skipped, so the same command
continues a killed study (a killed cell restarts; cells take minutes).
`--workers=2` runs cells in two processes. At the end the report is
rebuilt from the cell folders alone: <report_dir>/report.md, summary.csv
and the figures (experiments/study_report.py).
"""

import concurrent.futures
import json
import multiprocessing
import os
import sys
import time

from absl import app, flags
import ml_collections
import numpy as np

from experiments import study_report
from experiments.configs import study as study_configs
from rtrl_jax import experiment
from rtrl_jax.experiment.run_logger import write_json

_CONFIG = experiment.cli.define_config_flag(
    "experiments/configs/study.py",
    "The study grid (experiments/configs/study.py[:quick|paper]).")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Shorthand for --config=experiments/configs/study.py:quick "
    "(and the default --workdir runs/study_quick).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Study folder (default runs/study or runs/study_quick).")
_REPORT_DIR = flags.DEFINE_string(
    "report_dir", None, "Where report.md, summary.csv and the figures go "
    "(default: --workdir).")
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes running cells.")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Rebuild the report from the cell folders; no runs.")

RESULT = "result.json"
EVAL_SEED_OFFSET = 10_000     # evaluation episodes differ from training's


def cell(stage, task, system, rate, control=""):
  return dict(stage=stage, task=task, system=system, rate=float(rate),
              control=control)


def cell_dir(workdir, spec):
  system = spec["system"] + (f"__{spec['control']}" if spec["control"] else "")
  return os.path.join(workdir, "cells", spec["stage"], spec["task"], system,
                      f"lr{spec['rate']:g}")


def cell_name(spec):
  control = f" [{spec['control']}]" if spec["control"] else ""
  return (f"{spec['stage']}/{spec['task']}/{spec['system']}{control} "
          f"lr={spec['rate']:g}")


def tuning_cells(study):
  return [cell("tuning", task, system, rate)
          for task in study.tuning_tasks
          for system in study.tuned_systems
          for rate in study.learning_rates]


def load_result(workdir, spec):
  path = os.path.join(cell_dir(workdir, spec), RESULT)
  if not os.path.exists(path):
    return None
  with open(path) as file:
    return json.load(file)


def score(study, task, sampled_mean):
  """A task's sampled return mapped to [0, 1] by its score_range."""
  low, high = study.tasks[task].score_range
  return (sampled_mean - low) / (high - low)


def tuned_rates(study, workdir):
  """{system: learning rate}: each tuned system's rate with the best mean
  score over the tuning tasks (ties: the smaller rate); the others take
  their `tuned_like` system's rate. Needs every tuning cell's result."""
  rates = {}
  for system in study.tuned_systems:
    scores = {}
    for rate in study.learning_rates:
      values = []
      for task in study.tuning_tasks:
        result = load_result(workdir, cell("tuning", task, system, rate))
        if result is None:
          raise experiment.ConfigError(
              f"tuning cell {cell_name(cell('tuning', task, system, rate))} "
              "has no result yet")
        sampled = np.nanmean(np.asarray(result["sampled_mean"], float))
        values.append(score(study, task, sampled)
                      if np.isfinite(sampled) else -np.inf)
      scores[rate] = float(np.mean(values))
    rates[system] = max(sorted(scores), key=lambda rate: scores[rate])
  for system in study.systems:
    if system not in rates:
      like = study.systems[system].tuned_like
      if like not in rates:
        raise experiment.ConfigError(
            f"system {system} is not tuned and its tuned_like={like!r} is "
            f"not one of tuned_systems {list(study.tuned_systems)}")
      rates[system] = rates[like]
  return rates


def later_cells(study, rates):
  """The main grid and the controls, at the tuned rates."""
  cells = [cell("main", task, system, rates[system])
           for task in study_configs.ordered_tasks(study)
           for system in study_configs.ordered_systems(study)
           if not study.systems[system].tasks
           or task in study.systems[system].tasks]
  for name, control in study.controls.items():
    cells += [cell("controls", task, system, rates[system], name)
              for task in control.tasks for system in control.systems]
  for name, spec in study.get("defaults", {}).items():
    config = study_configs.defaults_config(study, name)
    cells.append(cell("defaults", spec.preset, name,
                      config.optimizer.learning_rate))
  return cells


def run_cell(study_dict, workdir, spec):
  """Trains and evaluates one cell in this process; returns a summary line."""
  # pylint: disable=g-import-not-at-top
  import jax
  from experiments import r2ac_training
  # pylint: enable=g-import-not-at-top
  study = ml_collections.ConfigDict(study_dict)
  directory = cell_dir(workdir, spec)
  if os.path.exists(os.path.join(directory, RESULT)):
    return f"{cell_name(spec)}: done before"
  if spec["stage"] == "defaults":
    config = study_configs.defaults_config(study, spec["system"])
  else:
    overrides = (study.controls[spec["control"]].overrides.to_dict()
                 if spec["control"] else None)
    config = study_configs.run_config(study, spec["task"], spec["system"],
                                      spec["rate"], overrides)
  offset = (study.tuning_seed_offset if spec["stage"] == "tuning"
            else study.seed_offset)
  count = study.tuning_seeds if spec["stage"] == "tuning" else study.seeds
  seeds = list(range(offset, offset + count))
  started = time.time()
  result = {**spec, "seeds": seeds, "config": config.to_dict(),
            "eval_episodes": study.eval_episodes,
            "greedy_eval_episodes": study.greedy_eval_episodes}
  try:
    out = r2ac_training.train_seeds(
        config, seeds, study.eval_episodes, study.greedy_eval_episodes,
        eval_seed_offset=EVAL_SEED_OFFSET)
  except experiment.NonFiniteLossError as error:
    nan = [float("nan")] * len(seeds)
    result.update(status="diverged", error=str(error), sampled_mean=nan,
                  sampled_std=nan, greedy_mean=nan, frames=[],
                  train_return=[], seconds_per_frame=float("nan"))
    summary = "diverged"
  else:
    result.update(
        status="finished", frames=out.frames.tolist(),
        train_return=out.train_return.tolist(),
        sampled_mean=out.sampled.mean(1).tolist(),
        sampled_std=out.sampled.std(1).tolist(),
        greedy_mean=out.greedy.mean(1).tolist(),
        seconds_per_frame=out.seconds_per_frame)
    summary = (f"sampled {out.sampled.mean():.3f} (seeds "
               f"{np.round(out.sampled.mean(1), 2).tolist()}), greedy "
               f"{out.greedy.mean():.3f}")
  result["seconds"] = round(time.time() - started, 1)
  os.makedirs(directory, exist_ok=True)
  write_json(os.path.join(directory, RESULT), experiment.json_safe(result),
             indent=1)
  jax.clear_caches()
  return f"{cell_name(spec)}: {summary}, {result['seconds']:.0f} s"


def run_cells(study, workdir, cells, workers, label):
  """Runs the cells without a result, `workers` at a time, printing progress."""
  todo = [spec for spec in cells if load_result(workdir, spec) is None]
  print(f"{label}: {len(cells) - len(todo)} of {len(cells)} cells done "
        f"before; running {len(todo)}", flush=True)
  if not todo:
    return
  started = time.time()
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers,
                                              mp_context=context) as pool:
    futures = [pool.submit(run_cell, study.to_dict(), workdir, spec)
               for spec in todo]
    for index, future in enumerate(
        concurrent.futures.as_completed(futures), 1):
      print(f"  [{index}/{len(todo)}] {future.result()} (total "
            f"{(time.time() - started) / 60:.1f} min)", flush=True)


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
    if not _REPORT_ONLY.value:
      run_cells(study, workdir, tuning_cells(study), _WORKERS.value,
                "tuning")
      rates = tuned_rates(study, workdir)
      print("tuned learning rates: " + ", ".join(
          f"{system} {rate:g}" for system, rate in rates.items()), flush=True)
      run_cells(study, workdir, later_cells(study, rates), _WORKERS.value,
                "main, controls and defaults")
    rates = tuned_rates(study, workdir)
    command = " ".join(["python -m experiments.study", *sys.argv[1:]])
    report = study_report.write_report(
        study, workdir, _REPORT_DIR.value or workdir,
        tuning_cells(study), later_cells(study, rates), rates, load_result,
        command=command)
  except (experiment.ConfigError, ValueError) as error:
    sys.exit(f"error: {error}")
  print(f"report: {report}")


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
