"""experiments/study.py: the grid, the rate choice, and --quick end to end."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
from run_helpers import script_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import study_cells as study_script
from experiments.configs import study as study_configs
from rtrl_jax.rl import envs
from rtrl_jax import experiment
# pylint: enable=g-import-not-at-top,wrong-import-position

TIMEOUT = 900


def all_cells(config, rate=1e-3):
  rates = {system: rate for system in config.systems}
  return study_script.tuning_cells(config) + study_script.later_cells(
      config, rates)


@pytest.mark.parametrize("name", sorted(study_configs.CONFIGS))
def test_every_cell_of_every_study_config_passes_the_r2ac_checks(name):
  # pylint: disable=g-import-not-at-top
  from experiments.configs import r2ac as r2ac_configs
  # pylint: enable=g-import-not-at-top
  config = study_configs.get_config(name)
  for spec in all_cells(config):
    if spec["stage"] == "defaults":
      run = study_configs.defaults_config(config, spec["system"])
      r2ac_configs.check(run)
      reference = r2ac_configs.get_config(config.defaults[spec["system"]]
                                          .preset)
      assert run.optimizer == reference.optimizer
      assert run.num_envs == reference.num_envs
      continue
    overrides = (config.controls[spec["control"]].overrides.to_dict()
                 if spec["control"] else None)
    run = study_configs.run_config(config, spec["task"], spec["system"],
                                   spec["rate"], overrides)
    r2ac_configs.check(run)
    assert run.num_envs * run.unroll_length == config.frames_per_update
    assert run.total_updates % run.updates_per_call == 0
    for key, value in (overrides or {}).items():
      where = (run.network.core_kwargs[run.network.core]
               if key in ("forget_init", "forget_bias") else run)
      assert where[key] == value, (spec, key)
    task = config.tasks[spec["task"]]
    if "memory_length" in task.kwargs:
      # The time limit must not cut the episode before its answer step.
      env = envs.make_env(run.env.name, **run.env.kwargs)
      assert env.max_episode_steps > task.kwargs.memory_length
  for system in config.systems.values():
    assert set(system.tasks) <= set(config.tasks)


def test_the_default_grid_is_the_one_the_issue_asks_for():
  config = study_configs.default()
  spans = sorted(task.kwargs.memory_length for task in config.tasks.values()
                 if task.kind == "memory")
  assert spans == [10, 30, 50, 100] and "cartpole" in config.tasks
  assert config.seeds == 5 and config.eval_episodes >= 1000
  main = [spec for spec in all_cells(config) if spec["stage"] == "main"]
  pairs = {(spec["task"], spec["system"]) for spec in main}
  for task in config.tasks:
    assert {(task, "elstm_rtrl_M10"), (task, "elstm_tbptt_M10")} <= pairs
  assert {("memorychain_L100", "elstm_rtrl_M50"),
          ("memorychain_L100", "elstm_tbptt_M50")} <= pairs


def write_result(workdir, spec, sampled):
  directory = study_script.cell_dir(workdir, spec)
  os.makedirs(directory)
  with open(os.path.join(directory, study_script.RESULT), "w") as file:
    json.dump({**spec, "sampled_mean": sampled}, file)


def test_tuned_rates_pick_the_best_mean_score_per_system(tmp_path):
  config = study_configs.quick()
  config.tuning_tasks = ["memorychain_L4", "cartpole"]
  config.tasks.cartpole = study_configs._task(  # pylint: disable=protected-access
      "gymnax:CartPole-v1", 10, (0.0, 500.0), "reactive")
  # Scores: (sampled + 1) / 2 on MemoryChain, sampled / 500 on CartPole.
  table = {("elstm_rtrl_M2", 3e-3): ([0.0, 0.2], [250.0]),    # 0.55, 0.5
           ("elstm_rtrl_M2", 1e-2): ([1.0, 0.6], [100.0]),    # 0.9, 0.2
           ("elstm_tbptt_M2", 3e-3): ([0.0], [100.0]),        # 0.5, 0.2
           ("elstm_tbptt_M2", 1e-2): ([0.0], [100.0])}        # a tie
  for (system, rate), (memory, cartpole) in table.items():
    write_result(tmp_path, study_script.cell(
        "tuning", "memorychain_L4", system, rate), memory)
    write_result(tmp_path, study_script.cell(
        "tuning", "cartpole", system, rate), cartpole)
  rates = study_script.tuned_rates(config, str(tmp_path))
  # rtrl: mean score 0.525 at 3e-3 against 0.55 at 1e-2.
  assert rates == {"elstm_rtrl_M2": 1e-2, "elstm_tbptt_M2": 3e-3,
                   "elstm_rtrl_M4": 1e-2}


def test_tuned_rates_need_every_tuning_cell(tmp_path):
  config = study_configs.quick()
  write_result(tmp_path, study_script.cell(
      "tuning", "memorychain_L4", "elstm_rtrl_M2", 3e-3), [0.0])
  with pytest.raises(experiment.ConfigError, match="has no result yet"):
    study_script.tuned_rates(config, str(tmp_path))


def study(*args, env):
  return subprocess.run([sys.executable, "-m", "experiments.study", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=TIMEOUT)


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
  return script_environment(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory, environment):
  workdir = tmp_path_factory.mktemp("study")
  result = study("--quick", f"--workdir={workdir}", "--workers=2",
                 env=environment)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_quick_study_runs_every_cell_and_writes_the_report(quick_study):
  workdir, result = quick_study
  config = study_configs.quick()
  cells = all_cells(config)
  with open(workdir / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(cells) == 9
  assert {row["stage"] for row in rows} == {"tuning", "main", "controls",
                                            "defaults"}
  for row in rows:
    seeds = config.tuning_seeds if row["stage"] == "tuning" else config.seeds
    spec = study_script.cell(row["stage"], row["task"], row["system"],
                             float(row["rate"]), row["control"])
    cell = json.loads((workdir / os.path.relpath(study_script.cell_dir(
        str(workdir), spec), workdir) / "result.json").read_text())
    assert cell["status"] == "finished"
    assert len(cell["sampled_mean"]) == len(cell["greedy_mean"]) == seeds
    offset = (config.tuning_seed_offset if row["stage"] == "tuning"
              else config.seed_offset)
    assert cell["seeds"] == list(range(offset, offset + seeds))
    assert len(cell["frames"]) == len(cell["train_return"])
    assert float(row["sampled_mean"]) == pytest.approx(
        sum(cell["sampled_mean"]) / seeds)
  report = (workdir / "report.md").read_text()
  for section in ("## Tuning", "## Main grid", "Greedy (argmax)",
                  "µs per frame", "## Controls", "## The CPU presets"):
    assert section in report
  assert "| MemoryChain L=4 | 0.00016M |" in report
  assert "python -m experiments.study --quick" in report
  for name in ("claim.png", "curves_memorychain_L4.png"):
    assert (workdir / name).stat().st_size > 1000
  assert "tuned learning rates: elstm_rtrl_M2" in result.stdout


def test_rerun_skips_finished_cells_and_report_only_rebuilds(quick_study,
                                                             environment,
                                                             tmp_path):
  workdir, _ = quick_study
  result = study("--quick", f"--workdir={workdir}", env=environment)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "tuning: 4 of 4 cells done before; running 0" in result.stdout
  assert "main, controls and defaults: 5 of 5 cells done before" in (
      result.stdout)
  result = study("--quick", f"--workdir={workdir}", "--report_only",
                 f"--report_dir={tmp_path}", env=environment)
  assert result.returncode == 0, result.stderr[-2000:]
  tables = lambda path: path.read_text().split("## Tuning")[1]
  assert tables(tmp_path / "report.md") == tables(workdir / "report.md")
  assert (tmp_path / "claim.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--workers=0"], "error: --workers: must be >= 1, got 0"),
    (["--config=experiments/configs/study.py"],
     "error: --quick: give either --quick or --config, not both"),
])
def test_bad_flags_are_one_line_errors(args, message, environment, tmp_path):
  result = study("--quick", f"--workdir={tmp_path}", *args, env=environment)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(message)
  assert not (tmp_path / "cells").exists()


# In its own process: it patches the training function.
DIVERGING_CELL = textwrap.dedent("""
    import json, sys
    from rtrl_jax.experiment import r2ac_training
    from experiments import study_cells as study
    from experiments.configs import study as study_configs
    from rtrl_jax import experiment
    def train_seeds(*args, **kwargs):
      raise experiment.NonFiniteLossError("non-finite loss at call 3")
    r2ac_training.train_seeds = train_seeds
    config = study_configs.quick()
    spec = study.tuning_cells(config)[0]
    print("LINE", study.run_cell(config.to_dict(), sys.argv[1], spec))
    print("AGAIN", study.run_cell(config.to_dict(), sys.argv[1], spec))
    print("RESULT", json.dumps(study.load_result(sys.argv[1], spec)))
""")


def test_a_diverged_cell_is_recorded_and_not_rerun(environment, tmp_path):
  result = subprocess.run(
      [sys.executable, "-c", DIVERGING_CELL, str(tmp_path)], cwd=ROOT,
      env=environment, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1]
           for line in result.stdout.splitlines() if " " in line}
  assert "diverged" in lines["LINE"] and "done before" in lines["AGAIN"]
  cell = json.loads(lines["RESULT"])
  assert cell["status"] == "diverged"
  assert cell["error"] == "non-finite loss at call 3"
