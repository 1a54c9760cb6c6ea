"""experiments/study.py --quick end to end: runs, resume-by-skip, report, errors."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from run_helpers import script_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.configs import study as study_configs
from rtrl_jax import envs
# pylint: enable=g-import-not-at-top,wrong-import-position

TIMEOUT = 600


@pytest.mark.parametrize("name", sorted(study_configs.CONFIGS))
def test_every_run_of_every_study_config_passes_the_r2ac_checks(name):
  # pylint: disable=g-import-not-at-top
  from experiments.configs import r2ac as r2ac_configs
  # pylint: enable=g-import-not-at-top
  config = study_configs.get_config(name)
  for task in config.tasks:
    for system in config.systems:
      run = study_configs.run_config(config, task, system, seed=0)
      r2ac_configs.check(run)
      assert run.num_envs * run.unroll_length == config.frames_per_update
    if "memory_length" in config.tasks[task].kwargs:
      # The time limit must not cut the episode before its answer step.
      env = envs.make_env(run.env.name, **run.env.kwargs)
      assert env.max_episode_steps > config.tasks[task].kwargs.memory_length


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
  result = study("--quick", f"--workdir={workdir}", env=environment)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_quick_study_runs_every_cell_and_writes_the_report(quick_study):
  workdir, result = quick_study
  config = study_configs.quick()
  expected = config.seeds * len(config.tasks) * len(config.systems)
  with open(workdir / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == expected
  assert {row["system"] for row in rows} == set(config.systems)
  for row in rows:
    final = json.loads((workdir / "runs" / row["task"] / row["system"]
                        / f"seed{row['seed']}" / "final_eval.json").read_text())
    assert len(final["greedy_returns"]) == config.final_eval_episodes
    assert len(final["sampled_returns"]) == config.final_eval_episodes
    assert float(row["final_greedy_return"]) == pytest.approx(
        sum(final["greedy_returns"]) / config.final_eval_episodes, abs=1e-6)
    if row["system"].startswith("elstm"):
      # The probe runs in every eLSTM run: RTRL's θ_r gradient is BPTT's.
      assert float(row["rtrl_recurrent_cosine_min"]) > 1 - 1e-4
      assert float(row["tbptt_recurrent_cosine_end"]) < 0.999
    if "rtrl" in row["system"]:
      assert float(row["carried_sens_norm_max_end"]) > 0
  report = (workdir / "report.md").read_text()
  assert "## Final greedy return" in report
  assert "| memorychain_L4 | 160 |" in report
  assert "python -m experiments.study --quick" in report
  for name in ("curves_memorychain_L4.png", "alignment.png"):
    assert (workdir / name).stat().st_size > 1000
  assert f"[{expected}/{expected}]" in result.stdout


def test_rerun_skips_finished_runs_and_report_only_rebuilds(quick_study,
                                                           environment,
                                                           tmp_path):
  workdir, _ = quick_study
  result = study("--quick", f"--workdir={workdir}", "--report_only",
                 f"--report_dir={tmp_path}", env=environment)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / "report.md").read_text().count("memorychain_L4") >= 4
  result = study("--quick", f"--workdir={workdir}", "--only=elstm_rtrl_M2",
                 f"--report_dir={tmp_path}", env=environment)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.count("done before") == study_configs.quick().seeds


def test_report_counts_only_seeds_with_a_finite_value(quick_study, environment,
                                                      tmp_path):
  workdir, _ = quick_study
  copy = tmp_path / "study"
  shutil.copytree(workdir, copy)
  config = study_configs.quick()
  path = (copy / "runs" / "memorychain_L4" / "elstm_rtrl_M2" / "seed0"
          / "final_eval.json")
  final = json.loads(path.read_text())
  final["greedy_mean"] = float("nan")      # e.g. a diverged run
  path.write_text(json.dumps(final))
  result = study("--quick", f"--workdir={copy}", "--report_only",
                 f"--report_dir={tmp_path}", env=environment)
  assert result.returncode == 0, result.stderr[-2000:]
  report = (tmp_path / "report.md").read_text()
  greedy = report.split("## Final greedy return")[1].split("## ")[0]
  lines = greedy.splitlines()
  header = next(line for line in lines if line.startswith("| task |"))
  row = next(line for line in lines if line.startswith("| memorychain_L4 |"))
  cells = dict(zip([c.strip() for c in header.split("|")],
                   [c.strip() for c in row.split("|")]))
  assert cells["elstm_rtrl_M2"].endswith(f"({config.seeds - 1}/{config.seeds})")
  assert not cells["elstm_tbptt_M2"].endswith(")")


@pytest.mark.parametrize("args,message", [
    (["--only=nope"], "error: --only: unknown ['nope']"),
    (["--workers=0"], "error: --workers: must be >= 1, got 0"),
    (["--config=experiments/configs/study.py"],
     "error: --quick: give either --quick or --config, not both"),
    (["--shard=1"], "error: --shard: must be k/n with 0 <= k < n, got '1'"),
    (["--shard=2/2"], "error: --shard: must be k/n with 0 <= k < n, got '2/2'"),
])
def test_bad_flags_are_one_line_errors(args, message, environment, tmp_path):
  result = study("--quick", f"--workdir={tmp_path}", *args, env=environment)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(message)
  assert not (tmp_path / "runs").exists()


# In its own process: the study script's absl flags must not meet another
# script's in this test process.
DIVERGING_STUDY = textwrap.dedent("""
    import json, os, sys
    from experiments import study
    from experiments.configs import study as study_configs
    from rtrl_jax import experiment
    calls = []
    def run(config, directory, resume, make_extra_evaluation):
      calls.append(directory)
      os.makedirs(directory, exist_ok=True)
      if len(calls) == 1:
        raise experiment.NonFiniteLossError("non-finite loss (nan) at step 3")
      return {"status": "finished", "frames": 10.0}
    def final_evaluation(directory, episodes, seed):
      with open(directory + "/final_eval.json", "w") as f:
        json.dump({"greedy_mean": 1.0}, f)
      return {"greedy_mean": 1.0}
    study.r2ac_training.run = run
    study.final_evaluation = final_evaluation
    config = study_configs.quick()
    runs = study.grid(config, [])[:2]
    for _ in range(2):      # the second time, both are done before
      study.run_grid(config, sys.argv[1], runs)
    with open(calls[0] + "/final_eval.json") as f:
      print("FINAL", json.dumps(json.load(f)))
    print("CALLS", len(calls))
""")


def test_a_diverged_run_is_recorded_and_the_study_goes_on(environment,
                                                          tmp_path):
  result = subprocess.run(
      [sys.executable, "-c", DIVERGING_STUDY, str(tmp_path)], cwd=ROOT,
      env=environment, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert "diverged (non-finite loss (nan) at step 3); counted as missing" in (
      lines[0])
  final = json.loads(next(l for l in lines if l.startswith("FINAL"))[6:])
  assert final["status"] == "diverged" and math.isnan(final["greedy_mean"])
  assert final["greedy_returns"] == []
  # The second run trained; on the second pass neither ran again.
  assert lines[-1] == "CALLS 2"
  assert sum("done before" in line for line in lines) == 2
