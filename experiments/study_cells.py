"""The study's cells: what to run, where results live, which rate each system gets.

The library half of experiments/study.py (which adds the absl flags and the
worker pool), importable without defining flags (tests, notebooks).
"""

import json
import os
import time

import ml_collections
import numpy as np

from experiments.configs import study as study_configs
from rtrl_jax import experiment
from rtrl_jax.experiment.run_logger import write_json

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
  from rtrl_jax.experiment import r2ac_training
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
