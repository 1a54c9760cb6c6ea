"""experiments/r2ac_anakin.py and experiments/evaluate_r2ac.py end to end.

Subprocess runs of the tiny config with timeouts. All share one persistent
JAX compilation cache, so only the first run compiles. Kill-and-resume
(after a SIGTERM preemption and a resume) compares the whole RunnerState (parameters, optimizer state, environment
states, core states and sensitivities, RNG key, update counter) bit for bit.
"""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from run_helpers import (checkpoint_steps, script_environment,
                         signal_after_checkpoint)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from rtrl_jax.experiment import r2ac_training
from experiments.configs import r2ac as r2ac_configs
from rtrl_jax.rl import evaluation
from rtrl_jax import experiment
# pylint: enable=g-import-not-at-top,wrong-import-position

# 20 calls of 10 updates, a checkpoint every 2 calls: a kill lands mid-run.
NUM_CALLS, UPDATES_PER_CALL, FRAMES_PER_UPDATE = 20, 10, 8 * 4
NUM_UPDATES = NUM_CALLS * UPDATES_PER_CALL
RUN_FLAGS = ["--config=experiments/configs/r2ac.py:tiny",
             f"--config.total_updates={NUM_UPDATES}",
             f"--config.updates_per_call={UPDATES_PER_CALL}",
             "--config.eval.every=10",
             "--config.run.checkpoint_every=2",
             "--config.run.progress=false"]
SIGNAL_AFTER_CALL = 4
TIMEOUT = 300


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
  return script_environment(tmp_path_factory.mktemp("jax_cache"))


def training(*args, workdir):
  return [sys.executable, "-m", "experiments.r2ac_anakin", *args,
          f"--workdir={workdir}"]


def run(command, environment):
  return subprocess.run(command, cwd=ROOT, env=environment,
                        capture_output=True, text=True, timeout=TIMEOUT)


def start_and_signal(workdir, signum, environment, *extra_flags,
                     after_call=SIGNAL_AFTER_CALL):
  """Starts a run; sends `signum` once checkpoint `after_call` exists."""
  return signal_after_checkpoint(
      training(*RUN_FLAGS, *extra_flags, workdir=workdir), environment,
      workdir, after_call, signum, TIMEOUT)


def saved_runner(workdir):
  _, _, runner, metadata = evaluation.restore_run(workdir)
  return runner, metadata


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, environment):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  result = run(training(*RUN_FLAGS, workdir=workdir), environment)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout


def test_run_writes_logs_results_and_plot(uninterrupted):
  workdir, stdout = uninterrupted
  plot = os.path.join(workdir, "return_vs_frames.png")
  assert f"plot: {plot}" in stdout
  assert stdout.strip().splitlines()[-1] == (
      f"evaluate: python -m experiments.evaluate_r2ac --workdir={workdir}")
  with open(plot, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["status"] == "finished" and results["updates"] == NUM_UPDATES
  assert results["frames"] == NUM_UPDATES * FRAMES_PER_UPDATE
  rows = experiment.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train = [row for row in rows if "train/loss/total" in row]
  assert [row["step"] for row in train] == list(range(1, NUM_CALLS + 1))
  assert [row["train/frames"] for row in train] == [
      call * UPDATES_PER_CALL * FRAMES_PER_UPDATE for call in range(1, NUM_CALLS + 1)]
  for name in ("train/episode_return_mean", "train/grad_norm",
               "train/loss/policy", "train/learning_rate"):
    assert all(np.isfinite(row[name]) for row in train), name
  assert train[-1]["train/learning_rate"] == pytest.approx(
      r2ac_configs.LEARNING_RATE / NUM_UPDATES, rel=1e-4)
  for kind in ("sampled", "greedy"):
    evals = [row["step"] for row in rows if f"eval/{kind}_return" in row]
    assert evals == [0, 10, 20], kind
  # The final evaluation: eval.final_episodes of each kind.
  assert results["final/episodes"] == r2ac_configs.tiny().eval.final_episodes
  for kind in ("sampled", "greedy"):
    assert -1.0 <= results[f"final/{kind}_return"] <= 1.0
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_resume_of_a_finished_run_keeps_its_results(uninterrupted,
                                                    environment):
  workdir, _ = uninterrupted
  path = os.path.join(workdir, "results.json")
  with open(path) as f:
    before = f.read()
  assert "eval/greedy_return" in json.loads(before)
  result = run(training(*RUN_FLAGS, "--resume", workdir=workdir), environment)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (f"{workdir}: finished before (call {NUM_CALLS} of {NUM_CALLS}); "
          "nothing to resume") in result.stdout
  with open(path) as f:
    assert f.read() == before


def test_sigterm_then_sigkill_then_resume_gives_the_same_runner_state(
    uninterrupted, tmp_path, environment):
  """Preempted (SIGTERM), resumed and killed (SIGKILL), resumed to the end."""
  workdir = str(tmp_path / "interrupted")
  returncode, stderr = start_and_signal(workdir, signal.SIGTERM, environment)
  assert returncode == 0, stderr[-3000:]
  assert "SIGTERM" in stderr
  preempted_at = checkpoint_steps(workdir)[-1]
  assert SIGNAL_AFTER_CALL <= preempted_at < NUM_CALLS, preempted_at
  runner, metadata = saved_runner(workdir)
  assert metadata == {"call": preempted_at,
                      "update": UPDATES_PER_CALL * preempted_at}
  assert int(runner.update) == UPDATES_PER_CALL * preempted_at
  assert not os.path.exists(os.path.join(workdir, "results.json"))

  returncode, _ = start_and_signal(workdir, signal.SIGKILL, environment,
                                   "--resume", after_call=preempted_at + 4)
  assert returncode == -signal.SIGKILL
  killed_at = checkpoint_steps(workdir)[-1]
  assert preempted_at + 4 <= killed_at < NUM_CALLS, killed_at
  resumed = run(training(*RUN_FLAGS, "--resume", workdir=workdir), environment)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed {workdir} from call {killed_at}" in resumed.stdout
  runner, metadata = saved_runner(workdir)
  reference, _ = saved_runner(uninterrupted[0])
  assert metadata == {"call": NUM_CALLS, "update": NUM_UPDATES}
  assert int(runner.update) == NUM_UPDATES
  assert runner.core_state.sensitivities is not None
  for leaf, reference_leaf in zip(jax.tree.leaves(runner),
                                  jax.tree.leaves(reference), strict=True):
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(reference_leaf))
  logged = [row["step"] for row in experiment.read_jsonl(
      os.path.join(workdir, "metrics.jsonl")) if "train/frames" in row]
  assert logged == list(range(1, NUM_CALLS + 1))


def test_evaluation_script_prints_the_table(uninterrupted, environment):
  workdir, _ = uninterrupted
  result = run([sys.executable, "-m", "experiments.evaluate_r2ac",
                f"--workdir={workdir}", "--seeds=2", "--episodes=4"],
               environment)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert f"checkpoint of call {NUM_CALLS} (update {NUM_UPDATES})" in lines[0]
  # Sampled, the primary number, first.
  assert [line.split()[:3] for line in lines[3:5]] == [
      ["sampled", "2", "4"], ["greedy", "2", "4"]]
  with open(os.path.join(workdir, "evaluation.json")) as f:
    evaluation = json.load(f)
  for actions in ("greedy", "sampled"):
    # MemoryChain rewards are ±1 once per episode.
    assert -1.0 <= evaluation[actions]["mean"] <= 1.0
    assert evaluation[actions]["seeds"] == 2


def test_config_errors_are_one_line_naming_the_key():
  config = r2ac_configs.get_config("tiny")
  config.total_updates = 45
  with pytest.raises(experiment.ConfigError) as error:
    r2ac_configs.check(config)
  assert str(error.value) == (
      "config.total_updates: must be a multiple of updates_per_call, got 45")
  config = r2ac_configs.get_config("tiny")
  config.network.core = "lstm"
  with pytest.raises(experiment.ConfigError, match=(
      r"^config\.network\.core: must be a cell with exact RTRL .* when "
      r"gradient is 'rtrl', got 'lstm'$")):
    r2ac_configs.check(config)
  config.gradient = "tbptt"
  r2ac_configs.check(config)
  config.gradient = "bptt"      # full-episode BPTT takes any core
  r2ac_configs.check(config)
  config.gradient = "sgd"
  with pytest.raises(experiment.ConfigError, match=(
      r"^config\.gradient: must be one of .*'bptt'.*, got 'sgd'$")):
    r2ac_configs.check(config)
  minigrid = r2ac_configs.get_config("minigrid")  # other env kwargs are fine
  r2ac_configs.check(minigrid)


@pytest.mark.parametrize("key,value,message", [
    ("optimizer.learning_rate", float("inf"), "a finite positive number"),
    ("optimizer.eps", -1.0, "a finite non-negative number"),
    ("optimizer.decay", 1.0, r"in \[0, 1\)"),
    ("optimizer.max_grad_norm", float("nan"), "a finite positive number"),
    ("network.encoder_sizes", (0,), "a tuple of positive ints"),
    ("network.encoder_sizes", "abc", "of type tuple"),
])
def test_bad_optimizer_and_encoder_values_are_one_line_errors(key, value,
                                                              message):
  config = r2ac_configs.get_config("tiny")
  parent, _, name = key.rpartition(".")
  with config[parent].ignore_type():
    config[parent][name] = value
  with pytest.raises(experiment.ConfigError,
                     match=rf"^config\.{key}: must be {message}") as error:
    r2ac_configs.check(config)
  assert "\n" not in str(error.value)


def test_a_config_the_system_rejects_leaves_no_run_folder(tmp_path):
  config = r2ac_configs.get_config("tiny")
  config.num_devices = len(jax.devices()) + 1
  workdir = tmp_path / "run"
  with pytest.raises(experiment.ConfigError, match="num_devices="):
    r2ac_training.run(config, str(workdir), resume=False)
  assert not workdir.exists()


def test_each_restore_refuses_the_other_systems_run_folder(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      {"env": {"name": "MiniGrid-MemoryS7-v0"}, "sebulba": {}}))
  with pytest.raises(ValueError, match="is a Sebulba run"):
    evaluation.restore_run(str(tmp_path))
  anakin = tmp_path / "anakin"
  anakin.mkdir()
  (anakin / "config.json").write_text(json.dumps(
      {"env": {"name": "gymnax:MemoryChain-bsuite"}}))
  with pytest.raises(ValueError, match="is an Anakin run"):
    evaluation.restore_sebulba_run(str(anakin))


def test_a_diverging_run_stops_with_one_line(tmp_path):
  """Learning rate 1e3: the summed loss (4.6e9 in the first call) passes
  r2ac_training.LOSS_LIMIT; the run stops with one line instead of
  finishing."""
  config = r2ac_configs.get_config("tiny")
  config.optimizer.learning_rate = 1e3
  config.run.progress = False
  with pytest.raises(experiment.NonFiniteLossError) as error:
    r2ac_training.run(config, str(tmp_path / "run"), resume=False)
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run" / "results.json").exists()


def test_resume_may_change_cadence_but_not_the_run(tmp_path):
  config = r2ac_configs.get_config("tiny")
  config.total_updates, config.run.progress = 20, False
  workdir = str(tmp_path / "run")
  r2ac_training.run(config, workdir, resume=False)
  os.remove(os.path.join(workdir, r2ac_training.RETURN_PLOT))
  config.eval.every = 1                        # cadence: allowed
  results = r2ac_training.run(config, workdir, resume=True)
  assert os.path.exists(results["plot"])             # redrawn
  config.optimizer.learning_rate = 1e-3              # the run: refused
  with pytest.raises(experiment.ConfigError, match="learning_rate"):
    r2ac_training.run(config, workdir, resume=True)
