"""The experiment framework and the copy-task script end to end.

Subprocess tests run `python -m experiments.copy_task` with the tiny config
and a timeout; the kill tests compare final parameters bit for bit.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from run_helpers import (checkpoint_steps, script_environment,
                         signal_after_checkpoint, strict_json_loads)

from rtrl_jax.tasks import copy_task
from rtrl_jax.tasks import from_config
from rtrl_jax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import copy_task as script_module
from experiments.configs import copy_task as configs
# pylint: enable=g-import-not-at-top,wrong-import-position
TINY = "--config=experiments/configs/copy_task.py:tiny"
# Enough steps that a kill lands mid-training; each checkpoint save is slow.
RUN_FLAGS = [TINY, "--config.train.num_steps=300",
             "--config.run.checkpoint_every=20"]
TIMEOUT = 240


def script(*args, workdir=None):
  flags = list(args) + ([f"--workdir={workdir}"] if workdir else [])
  return [sys.executable, "-m", "experiments.copy_task", *flags]


def environment():
  return script_environment()


def run_script(*args, workdir=None):
  return subprocess.run(script(*args, workdir=workdir), cwd=ROOT,
                        env=environment(), capture_output=True, text=True,
                        timeout=TIMEOUT)


def start_and_signal(workdir, signum, after_step=40):
  """Starts a run and sends `signum` once checkpoint `after_step` exists."""
  return signal_after_checkpoint(script(*RUN_FLAGS, workdir=workdir),
                                 environment(), workdir, after_step, signum,
                                 TIMEOUT)


def final_params(workdir):
  config = ml_collections.ConfigDict(
      json.load(open(os.path.join(workdir, "config.json"))))
  checkpointer = experiment.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, metadata = checkpointer.restore(from_config.init_train_state(config))
  checkpointer.close()
  return state, metadata


def assert_same_state(a, b):
  for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                            strict=True):
    np.testing.assert_array_equal(np.asarray(leaf_a), np.asarray(leaf_b))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  result = run_script(*RUN_FLAGS, workdir=workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


# ---- config checks --------------------------------------------------------

def reference(**overrides):
  train = dict(mode="rtrl", lr=1e-3, steps=10, online=True)
  train.update(overrides)
  return ml_collections.ConfigDict({"train": train})


RULES = [("train.mode", *experiment.config.one_of("rtrl", "bptt")),
         ("train.steps", experiment.config.positive, "a positive int"),
         ("@train.steps", lambda c: c.train.steps % 2 == 0, "even")]


@pytest.mark.parametrize("key,value,message", [
    ("mode", "rtlr", "config.train.mode: must be one of ['bptt', 'rtrl'], "
                     "got 'rtlr'"),
    ("steps", -2, "config.train.steps: must be a positive int, got -2"),
    ("steps", 3, "config.train.steps: must be even, got 3"),
    ("steps", 2.5, "config.train.steps: must be of type int, got 2.5 (float)"),
    ("online", 1, "config.train.online: must be of type bool, got 1 (int)"),
])
def test_check_config_bad_values(key, value, message):
  config = reference(**{key: value})
  with pytest.raises(experiment.ConfigError) as error:
    experiment.check_config(config, reference(), RULES)
  assert str(error.value) == message


def test_check_config_unknown_key_and_good_config():
  config = reference(lr=3)  # an int where a float is expected is fine
  experiment.check_config(config, reference(), RULES)
  config.train.mdoe = "rtrl"
  with pytest.raises(experiment.ConfigError, match=(
      r"^config\.train\.mdoe: unknown key \(did you mean "
      r"config\.train\.mode\?\)$")):
    experiment.check_config(config, reference(), RULES)


def test_locked_config_key_error_names_the_flag():
  argv = ["script", "--config.env.kwargs.max_step=4"]
  assert experiment.cli.describe_flag_error(KeyError("max_step"), argv) == (
      "config.env.kwargs.max_step: unknown key 'max_step' (the config file "
      "defines no such key)")
  # A missing key in the middle of the path names that key.
  argv = ["script", "--config.network.core_kwargs.gru.size=4"]
  assert experiment.cli.describe_flag_error(KeyError("gru"), argv) == (
      "config.network.core_kwargs.gru.size: unknown key 'gru' (the config "
      "file defines no such key)")
  # A locked ConfigDict raises AttributeError(KeyError("'key'")) when a flag
  # sets a key below an existing ConfigDict: str() quotes the key twice.
  argv = ["script", "--config.env.kwargs.foo=1"]
  error = AttributeError(KeyError("'foo'"))
  assert experiment.cli.describe_flag_error(error, argv) == (
      "config.env.kwargs.foo: unknown key 'foo' (the config file defines no "
      "such key)")
  # Only the quotes str(KeyError) puts around the message are removed.
  argv = ["script", "--config.optimizer.learning_rat=0.1"]
  error = KeyError("'learning_rat' Did you mean 'learning_rate' instead?")
  assert experiment.cli.describe_flag_error(error, argv) == (
      "config.optimizer.learning_rat: unknown key 'learning_rat' (did you "
      "mean 'learning_rate'?)")
  argv = ["script", "--config.optimizer.decay=abc"]
  error = ValueError("could not convert string to float: 'abc'")
  assert experiment.cli.describe_flag_error(error, argv) == (
      "config.optimizer.decay: could not convert string to float: 'abc'")


def test_script_config_errors_are_one_line_naming_the_key(tmp_path):
  bad_value = run_script(TINY, "--config.train.segment_length=3",
                         workdir=str(tmp_path / "a"))
  assert bad_value.returncode != 0
  assert bad_value.stderr.strip().splitlines()[-1] == (
      "error: config.train.segment_length: must be a divisor of "
      "2·data.max_length (rtrl and tbptt), got 3")
  unknown = run_script(TINY, "--config.train.learning_rat=0.1",
                       workdir=str(tmp_path / "b"))
  assert unknown.returncode != 0
  assert "train.learning_rat" in unknown.stderr
  assert not os.path.exists(tmp_path / "a" / "checkpoints")
  # Without --config=, ml_collections applies the overrides to the default
  # file while the flag is defined (at import): one line there too.
  default_file = run_script("--config.train.learning_rat=0.1",
                            workdir=str(tmp_path / "c"))
  assert default_file.returncode == 1
  assert default_file.stderr.strip().splitlines() == [
      "error: config.train.learning_rat: unknown key 'learning_rat' (did you "
      "mean 'learning_rate'?)"]
  assert not os.path.exists(tmp_path / "c")


def test_mistyped_config_file_is_one_line_naming_the_path(tmp_path):
  # ml_collections loads a --config= file lazily: parse_flags forces it.
  workdir = tmp_path / "run"
  missing = run_script("--config=experiments/configs/copy_tsk.py",
                       workdir=str(workdir))
  assert missing.returncode == 1
  lines = missing.stderr.strip().splitlines()
  assert len(lines) == 1, missing.stderr
  assert lines[0].startswith("error: --config: cannot load "
                             "experiments/configs/copy_tsk.py")
  assert "No such file" in lines[0]
  assert not os.path.exists(workdir)


def test_json_safe_writes_strict_json():
  results = {"return": float("nan"), "rows": [1.0, float("inf"), (2, -math.inf)],
             "ok": 0.5, "name": "x", "n": 3}
  text = json.dumps(experiment.json_safe(results))
  with pytest.raises(ValueError, match="non-standard JSON constant NaN"):
    strict_json_loads(json.dumps(results))
  assert strict_json_loads(text) == {
      "return": None, "rows": [1.0, None, [2, None]], "ok": 0.5, "name": "x",
      "n": 3}


def test_metrics_jsonl_is_strict_json_and_reads_back_nan(tmp_path):
  logger = experiment.RunLogger(str(tmp_path),
                                ml_collections.ConfigDict({"seed": 0}))
  logger.write(1, {"loss": 0.5, "episode_return_mean": float("nan")})
  logger.write(2, {"loss": float("inf"), "episode_return_mean": 1.0})
  logger.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [strict_json_loads(line) for line in lines] == [
      {"step": 1, "loss": 0.5, "episode_return_mean": None},
      {"step": 2, "loss": None, "episode_return_mean": 1.0}]
  rows = experiment.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert rows[0]["loss"] == 0.5 and math.isnan(rows[0]["episode_return_mean"])
  assert math.isnan(rows[1]["loss"]) and rows[1]["step"] == 2


# ---- checkpoints ----------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
  config = configs.get_config("tiny")
  state = from_config.init_train_state(config)
  state, _ = jax.jit(from_config.train_step(config))(state)
  checkpointer = experiment.Checkpointer(str(tmp_path), max_to_keep=2)
  for step in (1, 2, 3):
    checkpointer.save(step, state, {"step": step, "data_position": 1})
  assert checkpointer.all_steps() == [2, 3]
  fresh = from_config.init_train_state(config)
  restored, metadata = checkpointer.restore(fresh)
  assert metadata == {"step": 3, "data_position": 1}
  assert isinstance(restored, copy_task.TrainState)
  assert (jax.tree.structure(restored.opt_state)
          == jax.tree.structure(state.opt_state))
  assert_same_state(restored, state)
  assert int(restored.data_position) == 1
  with pytest.raises(FileNotFoundError,
                     match=r"^no checkpoint 1 in .* \(it has 2, 3\)$"):
    checkpointer.restore(fresh, 1)
  checkpointer.close()


def test_run_workdir_defaults_only_for_a_new_single_process_run(tmp_path):
  given = str(tmp_path)
  assert experiment.cli.run_workdir(given, "x", resume=True) == given
  missing = str(tmp_path / "typo")
  assert experiment.cli.run_workdir(missing, "x", resume=False) == missing
  with pytest.raises(SystemExit, match=(
      rf"^error: --resume: {missing} does not exist \(no run to continue")):
    experiment.cli.run_workdir(missing, "x", resume=True)
  default = experiment.cli.run_workdir(None, "copy", resume=False)
  assert os.path.dirname(default) == "runs"
  assert os.path.basename(default).startswith("copy_")
  with pytest.raises(SystemExit, match=r"^error: --resume needs --workdir"):
    experiment.cli.run_workdir(None, "copy", resume=True)
  with pytest.raises(SystemExit,
                     match=r"^error: 2 processes need --workdir: one folder"):
    experiment.cli.run_workdir(None, "copy", resume=False, num_processes=2)


def test_resume_compares_configs_and_accepts_keys_added_since(tmp_path):
  workdir = str(tmp_path)
  checkpointer = experiment.Checkpointer(os.path.join(workdir, "checkpoints"))
  checkpointer.save(4, {"w": jnp.zeros(2)}, {"step": 4})
  checkpointer.close()
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"train": {"lr": 0.1}}, f)    # a run from before "groups"

  def resume(lr=0.1, groups=1, added_keys=None):
    config = ml_collections.ConfigDict(
        {"train": {"lr": lr, "groups": groups}})
    checkpointer, step = experiment.prepare_workdir(
        workdir, config, resume=True, added_keys=added_keys)
    checkpointer.close()
    return step

  added = {"train.groups": 1}
  assert resume(added_keys=added) == 4
  with pytest.raises(experiment.ConfigError) as error:
    resume(groups=2, added_keys=added)
  assert str(error.value) == (
      f"config.train.groups: is 2 but the run in {workdir} was started "
      "before this key existed, which behaves as 1; pass "
      "--config.train.groups=1 to resume it")
  with pytest.raises(experiment.ConfigError,
                     match=r"^config\.train\.groups: is 1 but .* with None"):
    resume()                                  # not declared as added
  with pytest.raises(experiment.ConfigError,
                     match=r"^config\.train\.lr: is 0\.2 but .* with 0\.1"):
    resume(lr=0.2, added_keys=added)


def test_resume_without_saved_config_is_refused(tmp_path):
  workdir = str(tmp_path)
  checkpointer = experiment.Checkpointer(os.path.join(workdir, "checkpoints"))
  checkpointer.save(4, {"w": jnp.zeros(2)}, {"step": 4})
  checkpointer.close()
  config = ml_collections.ConfigDict({"train": {"lr": 0.1}})
  with pytest.raises(experiment.ConfigError) as error:
    experiment.prepare_workdir(workdir, config, resume=True)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"--workdir: {workdir} has checkpoints (latest "
                            "step 4) but no config.json")
  assert os.listdir(workdir) == ["checkpoints"]


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_with_results_but_no_checkpoints_is_refused(tmp_path,
                                                             resume):
  config = ml_collections.ConfigDict({"train": {"lr": 0.1}})
  for name, text in [("results.json", "{}"),
                     ("metrics.jsonl", '{"step": 10, "loss": 1.0}\n')]:
    workdir = str(tmp_path / f"{name}_{resume}")
    os.makedirs(workdir)
    with open(os.path.join(workdir, name), "w") as f:
      f.write(text)
    if name == "metrics.jsonl" and resume:
      # A run that stopped before its first checkpoint starts again (what
      # `--resume` of a preemptible job and the study's reruns rely on).
      checkpointer, step = experiment.prepare_workdir(workdir, config, True)
      checkpointer.close()
      assert step is None
      continue
    with pytest.raises(experiment.ConfigError) as error:
      experiment.prepare_workdir(workdir, config, resume)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"--workdir: {workdir} already has {name} but "
                              "no checkpoints")
    assert "new --workdir" in message
    assert os.listdir(workdir) == [name]
  # An empty metrics.jsonl (a run that failed at its start) is no result.
  workdir = str(tmp_path / f"empty_{resume}")
  os.makedirs(workdir)
  open(os.path.join(workdir, "metrics.jsonl"), "w").close()
  checkpointer, step = experiment.prepare_workdir(workdir, config, resume)
  checkpointer.close()
  assert step is None


@pytest.mark.parametrize("resume", [False, True])
def test_script_refuses_a_finished_run_without_checkpoints(tmp_path, resume):
  workdir = str(tmp_path / "copy_cpu_bptt")
  shutil.copytree(os.path.join(ROOT, "docs", "copy_task_runs",
                               "copy_cpu_bptt"), workdir)

  def contents():
    return {name: open(os.path.join(workdir, name), "rb").read()
            for name in sorted(os.listdir(workdir))}

  before = contents()
  result = run_script(TINY, *(["--resume"] if resume else []),
                      workdir=workdir)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(f"error: --workdir: {workdir} already has ")
  assert contents() == before


def test_checkpoint_keeps_zero_size_leaves(tmp_path):
  # A feed-forward core's state is a [B, 0] array, which orbax cannot write.
  state = {"hidden": jnp.zeros((4, 0)), "params": (jnp.arange(3.0),),
           "key": jnp.ones((2,), jnp.uint32)}
  checkpointer = experiment.Checkpointer(str(tmp_path))
  checkpointer.save(1, state)
  template = jax.tree.map(jnp.zeros_like, state)
  restored, _ = checkpointer.restore(template)
  assert restored["hidden"].shape == (4, 0)
  np.testing.assert_array_equal(restored["params"][0], state["params"][0])
  np.testing.assert_array_equal(restored["key"], state["key"])
  checkpointer.close()


@pytest.mark.parametrize("change, reason", [
    ("extra leaf", "tree structures do not match"),
    ("missing leaf", "tree structures do not match"),
    ("other shape", "not compatible with the stored shape"),
])
def test_checkpoint_template_mismatch_is_one_line(tmp_path, change, reason):
  state = {"params": jnp.arange(3.0), "key": jnp.ones((2,), jnp.uint32)}
  checkpointer = experiment.Checkpointer(str(tmp_path))
  checkpointer.save(7, state)
  template = {"extra leaf": {**state, "extra": jnp.ones(2)},
              "missing leaf": {"params": state["params"]},
              "other shape": {**state, "params": jnp.zeros(4)}}[change]
  with pytest.raises(experiment.ConfigError) as error:
    checkpointer.restore(template)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"checkpoint 7 in {tmp_path} does not fit")
  assert reason in message
  checkpointer.close()


# ---- kills, preemption, non-finite losses -----------------------------------

def test_sigkill_then_resume_gives_the_same_parameters(uninterrupted,
                                                       tmp_path):
  workdir = str(tmp_path / "killed")
  returncode, _ = start_and_signal(workdir, signal.SIGKILL)
  assert returncode == -signal.SIGKILL
  killed_at = checkpoint_steps(workdir)[-1]
  assert 40 <= killed_at < 300, killed_at
  resumed = run_script(*RUN_FLAGS, "--resume", workdir=workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  state, metadata = final_params(workdir)
  reference_state, _ = final_params(uninterrupted)
  assert metadata["step"] == 300 and int(state.step) == 300
  assert_same_state(state, reference_state)
  logged = [row["step"] for row in experiment.read_jsonl(
      os.path.join(workdir, "metrics.jsonl")) if "train/loss" in row]
  assert logged == sorted(set(logged)) == list(range(10, 301, 10))


def test_resume_of_an_ended_run_changes_nothing(uninterrupted, tmp_path):
  paths = [os.path.join(uninterrupted, name)
           for name in ("results.json", "metrics.jsonl")]
  before = [open(path).read() for path in paths]
  again = run_script(*RUN_FLAGS, "--resume", workdir=uninterrupted)
  assert again.returncode == 0, again.stderr[-3000:]
  assert (f"{uninterrupted}: ended before (finished at step 300); nothing to "
          "resume") in again.stdout
  assert [open(path).read() for path in paths] == before
  # A run that stopped early (e.g. at its target accuracy) has ended too.
  workdir = str(tmp_path)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"status": "stopped", "step": 40}, f)
  assert experiment.finished_results(workdir, 40, 300)["step"] == 40
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"status": "preempted", "step": 40}, f)
  assert experiment.finished_results(workdir, 40, 300) is None
  assert experiment.finished_results(workdir, None, 300) is None


def test_accuracy_by_length_of_a_finished_run(uninterrupted, tmp_path):
  """copy_task_by_length's per-sequence scores average to make_evaluate's
  test accuracy; its script prints one row per run; a folder that is no
  run is a one-line error."""
  config = ml_collections.ConfigDict(
      json.load(open(os.path.join(uninterrupted, "config.json"))))
  state, _ = final_params(uninterrupted)
  _, test = from_config.evaluation_sets(config)
  right = jax.jit(from_config.sequences_right(config))(state.params, test)
  accuracy = jax.jit(from_config.evaluate(config))(state.params,
                                                     test)["accuracy"]
  assert right.shape == (config.data.test_size,)
  np.testing.assert_allclose(float(np.mean(right)), float(accuracy),
                             rtol=1e-6)
  by_length = subprocess.run(
      [sys.executable, "-m", "experiments.copy_task_by_length",
       f"--runs={uninterrupted}"], cwd=ROOT, env=environment(),
      capture_output=True, text=True, timeout=TIMEOUT)
  assert by_length.returncode == 0, by_length.stderr[-3000:]
  header, _, row = by_length.stdout.strip().splitlines()[-3:]
  assert header.startswith("| run | L=1 |")
  assert len(row.split("|")) == len(header.split("|"))
  bad = subprocess.run(
      [sys.executable, "-m", "experiments.copy_task_by_length",
       f"--runs={tmp_path}"], cwd=ROOT, env=environment(),
      capture_output=True, text=True, timeout=TIMEOUT)
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines() == [
      f"error: --runs: {str(tmp_path)!r} has no config.json or checkpoints "
      "(not a copy-task run folder)"]


def test_sigterm_saves_and_exits_zero(tmp_path):
  workdir = str(tmp_path / "preempted")
  returncode, stderr = start_and_signal(workdir, signal.SIGTERM)
  assert returncode == 0, stderr[-3000:]
  assert "SIGTERM" in stderr
  saved = checkpoint_steps(workdir)[-1]
  assert 40 <= saved < 300, saved
  state, metadata = final_params(workdir)
  assert int(state.step) == int(state.data_position) == saved
  assert metadata == {"step": saved, "data_position": saved}
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  again = run_script(*RUN_FLAGS, workdir=workdir)  # no --resume: refused
  assert again.returncode != 0
  assert again.stderr.strip().splitlines()[-1].startswith(
      f"error: --workdir: {workdir} already has checkpoints")


def test_non_finite_loss_names_the_step_and_keeps_last_good(tmp_path):
  def train_step(state):
    step = state["step"] + 1
    loss = jnp.where(step == 7, jnp.nan, 1.0 / step)
    return {"step": step, "w": state["w"] + 1.0}, {"loss": loss}

  config = ml_collections.ConfigDict({"seed": 0})
  logger = experiment.RunLogger(str(tmp_path), config)
  checkpointer = experiment.Checkpointer(str(tmp_path / "checkpoints"))
  state = {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros(3)}
  with pytest.raises(experiment.NonFiniteLossError,
                     match=r"non-finite loss \(nan\) at step 7;.*last good "
                           r"checkpoint: step 5"):
    experiment.train_loop(
        state, jax.jit(train_step),
        experiment.LoopOptions(num_steps=20, log_every=4, eval_every=100,
                               checkpoint_every=5, progress=False),
        start_step=0, logger=logger, checkpointer=checkpointer)
  assert checkpointer.all_steps() == [5]
  restored, _ = checkpointer.restore(state)
  np.testing.assert_array_equal(restored["w"], 5.0)
  logger.close()


def test_script_exits_nonzero_on_non_finite_loss(tmp_path, monkeypatch):
  """The script turns the error into a one-line message and exit status 1."""
  real_make_train_step = copy_task.make_train_step

  def poisoned(*args):
    step = real_make_train_step(*args)

    def train_step(state):
      state, metrics = step(state)
      metrics["loss"] = jnp.where(state.step == 23, jnp.inf, metrics["loss"])
      return state, metrics
    return train_step

  monkeypatch.setattr(copy_task, "make_train_step", poisoned)
  workdir = str(tmp_path / "run")
  with pytest.raises(experiment.NonFiniteLossError, match="at step 23"):
    script_module.run(configs.get_config("tiny"), workdir, resume=False)
  assert checkpoint_steps(workdir) == [20]

  def failing_run(config, workdir, resume):
    raise experiment.NonFiniteLossError("non-finite loss (nan) at step 3")
  monkeypatch.setattr(script_module, "run", failing_run)
  # main() would take over this (pytest's) process's SIGTERM and SIGINT.
  monkeypatch.setattr(experiment.preemption, "install", lambda: None)
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS([sys.argv[0], TINY, f"--workdir={workdir}"])
  with pytest.raises(SystemExit) as exit_info:
    script_module.main([sys.argv[0]])
  assert exit_info.value.code == "error: non-finite loss (nan) at step 3"
