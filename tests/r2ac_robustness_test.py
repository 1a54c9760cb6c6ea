"""Issue 18 for the R2AC scripts (experiments/r2ac_anakin.py and
experiments/r2ac_sebulba.py): sizes beyond memory are one line before
anything is allocated; --resume may extend the Anakin run's total_updates
(the learning-rate schedule stretched as printed); kills at random moments,
then --resume, end like an uninterrupted run.

The copy task's and the framework's versions of these tests are in
tests/interruption_test.py, whose helpers these reuse.
"""

import os
import random
import shutil
import subprocess
import sys

import jax
import pytest
import interruption_test
from experiment_test import assert_same_state
from run_helpers import checkpoint_steps, script_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.configs import r2ac as r2ac_configs
from experiments.configs import sebulba as sebulba_configs
from rtrl_jax import experiment
from rtrl_jax.experiment import r2ac_training
from rtrl_jax.rl import evaluation
# pylint: enable=g-import-not-at-top,wrong-import-position

TIMEOUT = 240
SCRIPTS = {"anakin": ("experiments.r2ac_anakin", "r2ac.py", r2ac_configs),
           "sebulba": ("experiments.r2ac_sebulba", "sebulba.py",
                       sebulba_configs)}


def command(system, *flags):
  module, config_file, _ = SCRIPTS[system]
  return [sys.executable, "-m", module,
          f"--config=experiments/configs/{config_file}:tiny", *flags]


# ---- sizes beyond memory -----------------------------------------------------

HUGE = {"num_envs": 10**12, "sebulba.num_envs_per_thread": 10**12,
        "network.hidden_size": 3 * 10**9}


@pytest.mark.parametrize("system,key", [
    ("anakin", "num_envs"), ("anakin", "network.hidden_size"),
    ("sebulba", "sebulba.num_envs_per_thread"),
    ("sebulba", "network.hidden_size")])
def test_sizes_beyond_memory_are_refused_by_the_config_check(system, key):
  """The estimate (experiments/configs/parts.py estimated_bytes) blames the
  key that grew: the network alone, or the environments."""
  config_module = SCRIPTS[system][2]
  config = config_module.tiny()
  section, _, name = key.rpartition(".")
  (config[section] if section else config)[name] = HUGE[key]
  with pytest.raises(experiment.ConfigError) as error:
    config_module.check(config)
  message = str(error.value)
  assert message.startswith(f"config.{key}: must be small enough for memory "
                            "(with "), message
  assert f"GiB here), got {HUGE[key]}" in message and "\n" not in message
  config_module.check(config_module.tiny())      # the presets pass
  for name in config_module.CONFIGS if system == "sebulba" else (
      "default", "paper", "minigrid", "cartpole"):
    config_module.check(config_module.get_config(name))


@pytest.mark.parametrize("system,key", [
    ("anakin", "num_envs"), ("sebulba", "network.hidden_size")])
def test_sizes_beyond_memory_exit_with_one_line_and_no_folder(tmp_path,
                                                              system, key):
  """Without the check, num_envs=1e12 ended in a 35-line out-of-memory
  traceback with a half-made run folder left behind."""
  workdir = tmp_path / "huge"
  result = subprocess.run(
      command(system, f"--config.{key}={HUGE[key]}", f"--workdir={workdir}"),
      cwd=ROOT, env=script_environment(), capture_output=True, text=True,
      timeout=TIMEOUT)
  assert result.returncode == 1, result.stderr[-3000:]
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith(f"error: config.{key}: must be small enough for "
                         "memory (with "), line
  assert " GiB; " in line and line.endswith(f"got {HUGE[key]}")
  assert not os.path.exists(workdir)


# ---- shared by the kill and extension tests ----------------------------------

@pytest.fixture(scope="module")
def environment(tmp_path_factory):
  """One persistent compilation cache for every run of this module (only
  the first run compiles); one CPU device per process, as the Sebulba
  script tests run."""
  env = script_environment(tmp_path_factory.mktemp("jax_cache"))
  env["XLA_FLAGS"] = " ".join(
      f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
  return env


def start(system, workdir, environment, *flags):
  return subprocess.Popen(command(system, *flags, f"--workdir={workdir}"),
                          cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(system, workdir, environment, *flags):
  process = start(system, workdir, environment, *flags)
  stdout, stderr = process.communicate(timeout=TIMEOUT)
  assert process.returncode == 0, stderr[-3000:]
  return stdout


def optimizer_counts(opt_state):
  """The update counts the optimizer state keeps (the learning-rate
  schedule is read at them)."""
  return [int(leaf) for path, leaf in
          jax.tree_util.tree_leaves_with_path(opt_state)
          if "count" in jax.tree_util.keystr(path)]


def kill_and_resume(system, workdir, environment, flags, num_steps, after):
  """Up to 2 kills at random moments (interruption_test.random_moment; seed
  38 draws, for 6 or 12 steps, a SIGKILL mid-run and then a SIGINT after a
  later checkpoint; start-up moments are drawn with other seeds, and tested
  in tests/interruption_test.py), a --resume after each, then one to the
  end. Returns (history, resumed from: the latest checkpoint when each
  later session started, 0 for none). Fails unless 2 signals were sent
  and a session resumed from a checkpoint before the last step (where a
  broken restore shows)."""
  starts = []

  def start_session(resume):
    starts.append((checkpoint_steps(workdir) or [0])[-1])
    return start(system, workdir, environment, *flags,
                 *(["--resume"] if resume else []))

  kills, history = interruption_test.kill_at_random_moments(
      start_session, workdir,
      interruption_test.random_moment(workdir, num_steps, after),
      random.Random(38), max_kills=2, seconds=150)
  starts.append((checkpoint_steps(workdir) or [0])[-1])
  finish(system, workdir, environment, *flags,
         *(["--resume"] if os.path.exists(workdir) else []))
  resumed_from = starts[1:]
  assert kills == 2, history
  assert any(0 < step < num_steps for step in resumed_from), (resumed_from,
                                                             history)
  return history, resumed_from


# ---- Anakin ------------------------------------------------------------------

# 6 calls of 5 updates, a checkpoint after every call, evaluations at
# calls 0, 2, 4, 6 and the final one: tiny, and several checkpoints.
ANAKIN_CALLS, ANAKIN_UPDATES_PER_CALL = 6, 5
ANAKIN_FLAGS = [
    f"--config.total_updates={ANAKIN_CALLS * ANAKIN_UPDATES_PER_CALL}",
    f"--config.updates_per_call={ANAKIN_UPDATES_PER_CALL}",
    "--config.run.checkpoint_every=1", "--config.eval.every=2",
    "--config.run.progress=false"]


@pytest.fixture(scope="module")
def anakin_reference(tmp_path_factory, environment):
  workdir = str(tmp_path_factory.mktemp("anakin_reference"))
  finish("anakin", workdir, environment, *ANAKIN_FLAGS)
  return workdir


def test_anakin_kills_at_random_moments_then_resume_end_as_uninterrupted(
    anakin_reference, environment, tmp_path):
  """Kills (SIGKILL, SIGTERM, SIGINT) at random moments of `python -m
  experiments.r2ac_anakin` (start-up, training, checkpoint saves, final
  evaluation), a --resume after each, then one to the end (kill_and_resume):
  the whole RunnerState (parameters, optimizer state, environment and core
  states with the RTRL sensitivities, RNG key, update counter),
  results.json, metrics.jsonl/csv and TensorBoard equal the uninterrupted
  run's."""
  workdir = str(tmp_path / "killed")
  history, _ = kill_and_resume("anakin", workdir, environment, ANAKIN_FLAGS,
                               ANAKIN_CALLS, after=0.3)
  _, _, runner, metadata = evaluation.restore_run(workdir)
  _, _, reference_runner, reference_metadata = evaluation.restore_run(
      anakin_reference)
  assert metadata == reference_metadata == {
      "call": ANAKIN_CALLS, "update": ANAKIN_CALLS * ANAKIN_UPDATES_PER_CALL}
  assert_same_state(runner, reference_runner)
  interruption_test.assert_same_rows_and_results(workdir, anakin_reference,
                                                 history)


def test_anakin_resume_may_extend_total_updates(anakin_reference,
                                                 environment, tmp_path):
  """A finished run resumed with a larger total_updates trains on from its
  last checkpoint (update counter and optimizer state restored) to the new
  total; the linear learning-rate decay is stretched to reach 0 there, so
  the rate rises at the resume to the new schedule's value (the printed
  line says so). A smaller total is refused in one line."""
  workdir = str(tmp_path / "extended")
  shutil.copytree(anakin_reference, workdir)
  old_total = ANAKIN_CALLS * ANAKIN_UPDATES_PER_CALL
  new_calls = ANAKIN_CALLS + 2
  new_total = new_calls * ANAKIN_UPDATES_PER_CALL
  config = r2ac_configs.tiny()
  config.updates_per_call = ANAKIN_UPDATES_PER_CALL
  config.total_updates = old_total - ANAKIN_UPDATES_PER_CALL
  with pytest.raises(experiment.ConfigError) as error:
    r2ac_training.run(config, workdir, resume=True)
  assert str(error.value) == (
      f"config.total_updates: is {config.total_updates} but the run in "
      f"{workdir} was started with {old_total}; --resume may only increase "
      "it")
  stdout = finish("anakin", workdir, environment, *ANAKIN_FLAGS,
                  f"--config.total_updates={new_total}", "--resume")
  lr = r2ac_configs.LEARNING_RATE
  new_rate = lr * (1 - old_total / new_total)
  assert (f"total_updates: {old_total} -> {new_total}: the learning rate's "
          f"linear decay now reaches 0 at update {new_total}, so at update "
          f"{old_total} it rises from 0 to {new_rate:.4g} ({lr:g}·(1 - "
          f"{old_total}/{new_total})) and decays from there"
          ) in stdout.splitlines(), stdout
  _, _, runner, metadata = evaluation.restore_run(workdir)
  assert metadata == {"call": new_calls, "update": new_total}
  assert int(runner.update) == new_total
  # The optimizer state was restored: its count (the schedule's clock) went
  # on from the checkpoint's, not from 0.
  assert optimizer_counts(runner.opt_state) and set(
      optimizer_counts(runner.opt_state)) == {new_total}
  rows = interruption_test.jsonl_rows(workdir)
  train = [row for row in rows if "train/learning_rate" in row]
  assert [row["step"] for row in train] == list(range(1, new_calls + 1))
  reference = interruption_test.jsonl_rows(anakin_reference)
  assert interruption_test.without_timing(rows[:len(reference)]) == (
      interruption_test.without_timing(reference))
  for row in train:         # the rate of each call's last update
    schedule_total = old_total if row["step"] <= ANAKIN_CALLS else new_total
    update = row["step"] * ANAKIN_UPDATES_PER_CALL - 1
    assert row["train/learning_rate"] == pytest.approx(
        lr * (1 - update / schedule_total), rel=1e-5, abs=1e-9), row
  assert interruption_test.results(workdir)["updates"] == new_total
  interruption_test.assert_tensorboard_equals_jsonl(workdir)


# ---- Sebulba (synchronous) ---------------------------------------------------

# 12 updates, a checkpoint every 2 (all kept, to compare them), logs every 2.
SEBULBA_UPDATES = 12
SEBULBA_FLAGS = ["--config.sebulba.synchronous=true",
                 f"--config.total_updates={SEBULBA_UPDATES}",
                 "--config.run.checkpoint_every=2", "--config.run.log_every=2",
                 "--config.run.max_checkpoints=20"]
# Scalars that measure time or the queue, not what was trained.
SEBULBA_TIMING = ("train/time/", "train/sps", "train/steps_per_second",
                  "train/queue_size")
# Scalars that do not depend on the environments' trajectories.
SEBULBA_COUNTERS = ("step", "train/env_steps", "train/policy_lag_mean",
                    "train/policy_lag_max")


def names(row):
  """The names of a Sebulba metrics row or results.json, but the log
  window's episode statistics (train/window/*), which are there only when
  an episode ended in the window: after a resume that depends on the
  episodes."""
  return [name for name in row if "window/" not in name]


def csv_steps_and_names(workdir):
  """(step, name) of each metrics.csv line, but timings and train/window/*
  (see `names`)."""
  return [tuple(line.split(",")[:2])
          for line in interruption_test.csv_without_timing(workdir)
          if "window/" not in line]


def without_sebulba_timing(row):
  return {k: v for k, v in row.items() if not k.startswith(SEBULBA_TIMING)}


@pytest.fixture(scope="module")
def sebulba_reference(tmp_path_factory, environment):
  pytest.importorskip("envpool")
  workdir = str(tmp_path_factory.mktemp("sebulba_reference"))
  finish("sebulba", workdir, environment, *SEBULBA_FLAGS)
  return workdir


def test_sebulba_kills_at_random_moments_then_resume_end_as_uninterrupted(
    sebulba_reference, environment, tmp_path):
  """Kills of `python -m experiments.r2ac_sebulba` in synchronous mode, as
  the Anakin test does, compared with an uninterrupted run where Sebulba is
  deterministic.

  Synchronous Sebulba is bit-reproducible within one session (an
  uninterrupted run repeats exactly), but not across a resume, by design
  of rtrl_jax/rl/sebulba.py and not of the checkpoint layer: envpool's
  environment states cannot be saved, so a resumed session's actors start
  new episodes with fresh core states, from an envpool seeded with
  seed + 100003·(resumed update) and actor keys folded with it (so that a
  resume does not replay the first session's levels). After the first
  resume the trajectories, hence parameters, losses and episode statistics,
  differ from the uninterrupted run's. What is compared:

  * every checkpoint the first session saved (up to the update the next
    session resumed from) equals the uninterrupted run's bit for bit, and
    so does every metrics row up to that update (but timings);
  * every row of metrics.jsonl has the uninterrupted run's step and names
    (but train/window/*, logged only when an episode ended in the log
    window), in order (none duplicated, none missing), with equal env-step
    and policy-lag counters; metrics.csv has the same (step, name) lines
    in order (but train/window/*); TensorBoard equals metrics.jsonl;
  * the final checkpoint is at the last update, with the uninterrupted
    run's tree of arrays, and its optimizer count (the learning-rate
    schedule's clock) is the last update: the optimizer state was carried
    over every resume;
  * results.json has the same keys (but window/*), status, update and
    counters.
  """
  workdir = str(tmp_path / "killed")
  history, resumed_from = kill_and_resume(
      "sebulba", workdir, environment, SEBULBA_FLAGS, SEBULBA_UPDATES,
      after=0.3)
  first_resume = resumed_from[0]
  for update in [step for step in checkpoint_steps(sebulba_reference)
                 if step <= first_resume]:
    state = evaluation.restore_sebulba_run(workdir, update)[3]
    assert_same_state(state, evaluation.restore_sebulba_run(
        sebulba_reference, update)[3])
  *_, state, metadata = evaluation.restore_sebulba_run(workdir)
  *_, reference_state, reference_metadata = evaluation.restore_sebulba_run(
      sebulba_reference)
  assert metadata == reference_metadata == {"update": SEBULBA_UPDATES}
  assert int(state.update) == SEBULBA_UPDATES
  assert set(optimizer_counts(state.opt_state)) == {SEBULBA_UPDATES}
  assert (jax.tree.structure(state) == jax.tree.structure(reference_state))
  assert [(x.shape, x.dtype) for x in jax.tree.leaves(state)] == [
      (x.shape, x.dtype) for x in jax.tree.leaves(reference_state)]
  rows, reference_rows = (
      [without_sebulba_timing(row) for row in interruption_test.jsonl_rows(w)]
      for w in (workdir, sebulba_reference))
  assert [sorted(names(row)) for row in rows] == [
      sorted(names(row)) for row in reference_rows], history
  for row, reference_row in zip(rows, reference_rows):
    assert {k: row[k] for k in SEBULBA_COUNTERS if k in row} == {
        k: reference_row[k] for k in SEBULBA_COUNTERS if k in reference_row}
    if row["step"] <= first_resume:
      assert row == pytest.approx(reference_row, nan_ok=True), (row["step"],
                                                                history)
  assert csv_steps_and_names(workdir) == csv_steps_and_names(
      sebulba_reference), history
  interruption_test.assert_tensorboard_equals_jsonl(workdir)
  got, want = (interruption_test.results(w)
               for w in (workdir, sebulba_reference))
  assert sorted(names(got)) == sorted(names(want))
  for key in ("status", "update", "env_steps", "policy_lag_mean"):
    assert got[key] == want[key], key
