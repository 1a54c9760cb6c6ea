"""Issue 18: every interruption and mistake ends with one clear line and
nothing lost (copy task and the shared experiment framework).

  * signals: SIGTERM inside a long C call exits at once as preempted; Ctrl-C
    saves like SIGTERM; a second Ctrl-C aborts; SIGTERM at start-up exits 0
    with the line launch/slurm.sbatch requeues on;
  * the final evaluation a kill lost is redone by --resume, with no
    duplicate rows in metrics.jsonl/csv and TensorBoard equal to the JSONL;
  * a second process on a workdir is refused; a damaged newest checkpoint
    falls back to the intact one before it; a diverging loss stops the run;
  * --resume may change cadence and raise train.num_steps, nothing else;
  * kills (SIGKILL, SIGTERM, SIGINT) at random moments, then --resume, end
    bit-identical to an uninterrupted run.
"""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from experiment_test import assert_same_state
from experiment_test import final_params as final_state
from run_helpers import checkpoint_steps, script_environment

from rtrl_jax.tasks import copy_task
from rtrl_jax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import copy_task as script_module
from experiments.configs import copy_task as configs
# pylint: enable=g-import-not-at-top,wrong-import-position

TINY = "--config=experiments/configs/copy_task.py:tiny"
TIMEOUT = 240


def script(*args, workdir=None):
  flags = list(args) + ([f"--workdir={workdir}"] if workdir else [])
  return [sys.executable, "-m", "experiments.copy_task", *flags]


def run_script(*args, workdir=None):
  return subprocess.run(script(*args, workdir=workdir), cwd=ROOT,
                        env=script_environment(), capture_output=True,
                        text=True, timeout=TIMEOUT)


def preempted_line(stdout):
  lines = [line for line in stdout.splitlines() if line.startswith("{")]
  assert lines, stdout
  return json.loads(lines[-1])


def tensorboard_rows(workdir):
  """{(tag, step): value} of every scalar in workdir/tensorboard, and the
  number of events read (duplicates included)."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  rows, count = {}, 0
  for path in sorted(glob.glob(os.path.join(workdir, "tensorboard",
                                            "events.*"))):
    for event in event_file_loader.LegacyEventFileLoader(path).Load():
      for value in event.summary.value:
        count += 1
        rows[(value.tag, event.step)] = value.simple_value
  return rows, count


def jsonl_rows(workdir):
  return experiment.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def assert_tensorboard_equals_jsonl(workdir):
  expected = {(name, row["step"]): value for row in jsonl_rows(workdir)
              for name, value in row.items()
              if name != "step" and np.isfinite(value)}
  rows, count = tensorboard_rows(workdir)
  assert count == len(rows), "TensorBoard has duplicate points"
  assert set(rows) == set(expected)
  for key, value in expected.items():
    assert rows[key] == pytest.approx(value, rel=1e-6), key


def without_timing(rows):
  return [{k: v for k, v in row.items() if k != "train/steps_per_second"}
          for row in rows]


def csv_without_timing(workdir):
  with open(os.path.join(workdir, "metrics.csv")) as f:
    return [line for line in f if ",train/steps_per_second," not in line]


def results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  saved.pop("seconds_this_session")
  return saved


def tiny_config(**train):
  config = configs.tiny()
  config.train.update(train)
  return config


# ---- signals ----------------------------------------------------------------

def _guarded_python(code):
  """A subprocess that installs the scripts' signal handling, prints
  "ready" and runs `code`."""
  program = textwrap.dedent("""
      import hashlib, os, signal, sys, time
      from rtrl_jax.experiment import preemption
      preemption.install()
      print("ready", flush=True)
  """) + textwrap.dedent(code)
  return subprocess.Popen([sys.executable, "-c", program], cwd=ROOT,
                          env=script_environment(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def test_sigterm_inside_a_long_c_call_exits_at_once_as_preempted():
  """A signal while the main thread is in C (here a 60 s key derivation,
  as an XLA compilation would be) is answered at once, not when the call
  returns; the exit is 0 with the line launch/slurm.sbatch requeues on."""
  process = _guarded_python(
      "hashlib.pbkdf2_hmac('sha256', b'x', b'y', 300_000_000)\n"
      "print('the call returned', flush=True)\n")
  assert process.stdout.readline().strip() == "ready"
  time.sleep(0.5)
  sent = time.time()
  process.send_signal(signal.SIGTERM)
  try:
    stdout, stderr = process.communicate(timeout=30)
  finally:
    process.kill()
  assert time.time() - sent < 10, "the signal waited for the C call"
  assert process.returncode == 0, stderr
  assert "the call returned" not in stdout
  line = preempted_line(stdout)
  assert line["status"] == "preempted" and line["signal"] == "SIGTERM"
  assert '"status": "preempted"' in stdout   # what slurm.sbatch greps for
  with open(os.path.join(ROOT, "launch", "slurm.sbatch")) as f:
    sbatch = f.read()
  assert '[[ "$status" -eq 0 ]] && grep -q \'"status": "preempted"\'' in sbatch


def _signal_in_teardown(signum, ignore_at_exit=True):
  """Sends `signum` to a guarded process while the interpreter tears down
  after its script returned (a __main__ object's finaliser, run once Python
  has put back the signals' default actions, holds it there for 3 s).
  Returns (returncode, stdout)."""
  process = _guarded_python(
      ("" if ignore_at_exit else
       "import atexit\natexit.unregister(preemption._ignore_at_exit)\n")
      + "class Teardown:\n"
      "  def __del__(self):\n"
      "    print('tearing down', flush=True)\n"
      "    time.sleep(3)\n"
      "teardown = Teardown()\n"
      "print('finished', flush=True)\n")
  try:
    lines = [process.stdout.readline().strip() for _ in range(3)]
    assert lines == ["ready", "finished", "tearing down"], lines
    process.send_signal(signum)
    stdout, _ = process.communicate(timeout=30)
  finally:
    process.kill()
  return process.returncode, stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_after_the_script_returned_keeps_its_exit_status(signum):
  """A run whose results are written is not turned into a killed one by a
  SIGTERM or Ctrl-C that lands in the interpreter's teardown."""
  returncode, stdout = _signal_in_teardown(signum)
  assert returncode == 0
  assert "preempted" not in stdout


def test_without_ignoring_at_exit_a_teardown_signal_kills():
  """Negative control for the test above: the teardown window is real."""
  returncode, _ = _signal_in_teardown(signal.SIGTERM, ignore_at_exit=False)
  assert returncode == -signal.SIGTERM


def test_second_ctrl_c_while_saving_aborts():
  process = _guarded_python(
      "preemption.set_deferring(True)   # inside the loop, a save pending\n"
      "os.kill(os.getpid(), signal.SIGINT)\n"
      "time.sleep(1)\n"
      "print('requested', preemption.requested(), flush=True)\n"
      "os.kill(os.getpid(), signal.SIGINT)\n"
      "time.sleep(30)\n")
  stdout, stderr = process.communicate(timeout=60)
  assert "requested SIGINT" in stdout
  assert process.returncode == 130
  assert stderr.strip().splitlines() == [
      "SIGINT again while saving: aborted without waiting for the checkpoint"]


def test_signal_in_the_last_step_saves_it_then_exits_as_preempted(tmp_path):
  """The script's final evaluation does not run (a resume redoes it, see
  test_resume_after_the_last_checkpoint_redoes_the_final_evaluation)."""
  process = _guarded_python(f"""
      import jax.numpy as jnp, ml_collections
      from rtrl_jax import experiment
      def step(state):
        if int(state["step"]) + 1 == 6:
          os.kill(os.getpid(), signal.SIGTERM)
          time.sleep(0.5)
        return {{"step": state["step"] + 1}}, {{"loss": jnp.float32(1.0)}}
      workdir = {str(tmp_path)!r}
      logger = experiment.RunLogger(workdir, ml_collections.ConfigDict())
      checkpointer = experiment.Checkpointer(workdir + "/checkpoints")
      experiment.train_loop({{"step": jnp.zeros((), jnp.int32)}}, step,
          experiment.LoopOptions(num_steps=6, log_every=1, eval_every=100,
                                 checkpoint_every=4, progress=False),
          start_step=0, logger=logger, checkpointer=checkpointer)
      print("the final evaluation ran", flush=True)
  """)
  stdout, stderr = process.communicate(timeout=TIMEOUT)
  assert process.returncode == 0, stderr[-3000:]
  assert "the final evaluation ran" not in stdout
  line = preempted_line(stdout)
  assert line["status"] == "preempted" and line["signal"] == "SIGTERM"
  assert line["note"].startswith("saved the checkpoint of step 6 in ")
  assert checkpoint_steps(str(tmp_path)) == [4, 6]


def _start(workdir, *flags):
  return subprocess.Popen(script(*flags, workdir=workdir), cwd=ROOT,
                          env=script_environment(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, process, timeout=TIMEOUT):
  deadline = time.time() + timeout
  while not predicate():
    if process.poll() is not None:
      raise AssertionError(f"ended early: {process.stderr.read()[-3000:]}")
    if time.time() > deadline:
      process.kill()
      raise AssertionError("timed out")
    time.sleep(0.02)


def _logged_train_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line)["step"] for line in f
            if line.endswith("\n") and "train/loss" in line]


def test_ctrl_c_mid_training_saves_and_exits_like_sigterm(tmp_path):
  workdir = str(tmp_path / "interrupted")
  process = _start(workdir, TINY, "--config.train.num_steps=100000",
                   "--config.run.checkpoint_every=100000")
  _wait_for(lambda: len(_logged_train_steps(workdir)) >= 2, process)
  process.send_signal(signal.SIGINT)
  stdout, stderr = process.communicate(timeout=TIMEOUT)
  assert process.returncode == 0, stderr[-3000:]
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
  saved = checkpoint_steps(workdir)
  assert len(saved) == 1 and 20 <= saved[0] < 100000, saved
  assert preempted_line(stdout) == {"status": "preempted", "step": saved[0]}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_script_imports_exits_zero_as_preempted(tmp_path,
                                                                 signum):
  """experiments/__init__.py answers signals before JAX is even imported."""
  process = _start(str(tmp_path / "importing"), TINY)
  time.sleep(0.4)
  assert process.poll() is None
  process.send_signal(signum)
  stdout, stderr = process.communicate(timeout=TIMEOUT)
  assert process.returncode == 0, stderr[-3000:]
  assert "Traceback" not in stderr
  assert preempted_line(stdout)["signal"] == signum.name
  assert not os.path.exists(tmp_path / "importing")


def test_sigterm_at_start_up_exits_zero_as_preempted(tmp_path):
  workdir = str(tmp_path / "early")
  process = _start(workdir, TINY)
  _wait_for(lambda: os.path.exists(os.path.join(workdir, "config.json")),
            process)
  process.send_signal(signal.SIGTERM)    # compiling or evaluating step 0
  stdout, stderr = process.communicate(timeout=TIMEOUT)
  assert process.returncode == 0, stderr[-3000:]
  assert preempted_line(stdout)["status"] == "preempted"
  assert "Traceback" not in stderr
  resumed = run_script(TINY, "--resume", workdir=workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert results(workdir)["status"] == "finished"


# ---- the final evaluation, duplicates, TensorBoard ----------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A tiny copy-task run to its end, in-process (no signal handling)."""
  workdir = str(tmp_path_factory.mktemp("finished"))
  script_module.run(tiny_config(num_steps=60), workdir, resume=False)
  return workdir


def _copy_run(source, target):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(source, target)
  return str(target)


def test_resume_after_the_last_checkpoint_redoes_the_final_evaluation(
    finished, tmp_path):
  """A kill between the last checkpoint and results.json (here: results.json
  deleted, the killed run's TensorBoard points lost) is repaired by
  --resume: results.json with the valid/* and test/* scalars, no duplicate
  rows, TensorBoard equal to metrics.jsonl."""
  workdir = _copy_run(finished, tmp_path / "killed_at_the_end")
  os.remove(os.path.join(workdir, "results.json"))
  for path in glob.glob(os.path.join(workdir, "tensorboard", "events.*")):
    with open(path, "r+b") as f:      # a kill lost the events' tail
      f.truncate(os.path.getsize(path) // 2)
  resumed = script_module.run(tiny_config(num_steps=60), workdir, resume=True)
  assert {"valid/accuracy", "test/accuracy"} <= set(resumed)
  assert results(workdir) == results(finished)
  assert jsonl_rows(workdir) == jsonl_rows(finished)
  assert csv_without_timing(workdir) == csv_without_timing(finished)
  assert_tensorboard_equals_jsonl(workdir)
  assert_tensorboard_equals_jsonl(finished)


def test_tensorboard_keeps_every_row_after_sigkill_without_resume(tmp_path):
  """Events are written in the logging thread: a run killed (and not
  resumed) has every row of metrics.jsonl in TensorBoard, but for the row
  being written when it died."""
  for attempt in range(3):
    workdir = str(tmp_path / f"killed{attempt}")
    process = _start(workdir, TINY, "--config.train.num_steps=100000",
                     "--config.run.log_every=1")
    _wait_for(lambda: len(_logged_train_steps(workdir)) >= 30 + 20 * attempt,
              process)
    process.kill()
    process.communicate()
    rows = [row for row in jsonl_rows(workdir)]
    last = rows[-1]["step"]
    expected = {(name, row["step"]) for row in rows for name, value in
                row.items() if name != "step" and np.isfinite(value)
                and row["step"] < last}
    logged, _ = tensorboard_rows(workdir)
    assert expected <= set(logged), sorted(expected - set(logged))[:5]


def test_resume_without_a_checkpoint_starts_tensorboard_over(tmp_path):
  workdir = str(tmp_path / "no_checkpoint")
  logger = experiment.RunLogger(workdir, ml_collections.ConfigDict({"a": 1}))
  logger.write(1, {"train/loss": 5.0})
  logger.close()
  time.sleep(1.1)     # event file names hold the second they were opened
  # --resume with no checkpoint: the run starts over, old events go too.
  logger = experiment.RunLogger(workdir, ml_collections.ConfigDict({"a": 1}))
  logger.write(1, {"train/loss": 3.0})
  logger.close()
  assert tensorboard_rows(workdir) == ({("train/loss", 1): 3.0}, 1)


def test_logger_skips_names_already_logged_at_the_resumed_step(tmp_path):
  workdir = str(tmp_path)
  config = ml_collections.ConfigDict({"a": 1})
  logger = experiment.RunLogger(workdir, config)
  logger.write(10, {"train/loss": 1.0, "valid/accuracy": 0.5})
  logger.write(10, {"test/accuracy": 0.75})
  logger.write(11, {"train/loss": 0.5})
  logger.close()
  logger = experiment.RunLogger(workdir, config, resume_step=10)
  assert logger.logged_names(10) == {"train/loss", "valid/accuracy",
                                     "test/accuracy"}
  logger.write(10, {"valid/accuracy": 0.5, "test/accuracy": 0.75,
                    "test/loss": 0.1})
  logger.close()
  rows = jsonl_rows(workdir)
  assert rows == [{"step": 10, "train/loss": 1.0, "valid/accuracy": 0.5},
                  {"step": 10, "test/accuracy": 0.75},
                  {"step": 10, "test/loss": 0.1}]
  assert_tensorboard_equals_jsonl(workdir)


# ---- the run folder: lock, damaged checkpoints ---------------------------------

def test_a_second_run_on_a_workdir_is_refused(tmp_path):
  workdir = str(tmp_path / "shared")
  config = ml_collections.ConfigDict({"a": 1})
  first, _ = experiment.prepare_workdir(workdir, config, resume=False)
  with pytest.raises(experiment.ConfigError) as error:
    experiment.prepare_workdir(workdir, config, resume=True)
  assert str(error.value) == (
      f"--workdir: {workdir} is in use by another process (a run on it holds "
      "its lock); wait for that run to end or choose another --workdir")
  first.close()
  second, _ = experiment.prepare_workdir(workdir, config, resume=True)
  second.close()


def test_a_second_script_on_a_running_workdir_exits_with_one_line(tmp_path):
  workdir = str(tmp_path / "busy")
  process = _start(workdir, TINY, "--config.train.num_steps=100000")
  try:
    _wait_for(lambda: os.path.exists(os.path.join(workdir, "config.json")),
              process)
    second = run_script(TINY, "--resume", workdir=workdir)
  finally:
    process.kill()
    process.communicate()
  assert second.returncode == 1
  assert second.stderr.strip().splitlines() == [
      f"error: --workdir: {workdir} is in use by another process (a run on it "
      "holds its lock); wait for that run to end or choose another --workdir"]


def _damage(workdir, step, how):
  folder = os.path.join(workdir, "checkpoints", str(step), "state")
  files = [p for p in glob.glob(os.path.join(folder, "**", "*"),
                                recursive=True) if os.path.isfile(p)]
  path = max(files, key=os.path.getsize)      # the array data
  data = bytearray(open(path, "rb").read())
  if how == "bit flip":
    data[len(data) // 2] ^= 0x10
  else:
    data = data[: len(data) // 2]
  with open(path, "wb") as f:
    f.write(data)


@pytest.mark.parametrize("how", ["bit flip", "truncated"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
    tmp_path, capfd, how):
  workdir = str(tmp_path / "run")
  config = ml_collections.ConfigDict({"a": 1})
  state = {"w": jnp.arange(4096, dtype=jnp.float32)}
  checkpointer, _ = experiment.prepare_workdir(workdir, config, resume=False)
  checkpointer.save(1, state, {"step": 1})
  checkpointer.save(2, jax.tree.map(lambda x: x + 1, state), {"step": 2})
  checkpointer.close()
  experiment.RunLogger(workdir, config).close()      # config.json
  _damage(workdir, 2, how)
  checkpointer, step = experiment.prepare_workdir(workdir, config, resume=True)
  restored, metadata = checkpointer.restore(state, step)
  checkpointer.close()
  assert step == 1 and metadata == {"step": 1}
  np.testing.assert_array_equal(restored["w"], state["w"])
  warnings = [line for line in capfd.readouterr().err.splitlines()
              if line.startswith("warning:")]
  corrupt = os.path.join(workdir, "checkpoints.corrupt", "2")
  assert len(warnings) == 1 and corrupt in warnings[0]
  assert "resume from step 1" in warnings[0]
  assert os.path.isdir(corrupt)


def test_a_damaged_only_checkpoint_is_one_line(tmp_path):
  workdir = str(tmp_path)
  checkpointer = experiment.Checkpointer(os.path.join(workdir, "checkpoints"))
  state = {"w": jnp.arange(4096, dtype=jnp.float32)}
  checkpointer.save(3, state)
  _damage(workdir, 3, "bit flip")
  with pytest.raises(experiment.ConfigError) as error:
    checkpointer.restore(state, 3)
  checkpointer.close()
  assert "\n" not in str(error.value)
  assert str(error.value).startswith(
      f"checkpoint 3 in {workdir}/checkpoints is damaged: state/")


# ---- divergence --------------------------------------------------------------

def _diverging_step(state):
  step = state["step"] + 1
  loss = jnp.where(step >= 13, 1e8, 1.0 + 0.01 * step)
  return {"step": step}, {"loss": loss, "grad_norm": jnp.float32(2.0)}


def test_a_diverging_loss_stops_before_saving(tmp_path):
  workdir = str(tmp_path)
  logger = experiment.RunLogger(workdir, ml_collections.ConfigDict({"a": 1}))
  checkpointer = experiment.Checkpointer(os.path.join(workdir, "checkpoints"))
  with pytest.raises(experiment.DivergenceError) as error:
    experiment.train_loop(
        {"step": jnp.zeros((), jnp.int32)}, jax.jit(_diverging_step),
        experiment.LoopOptions(num_steps=40, log_every=2, eval_every=100,
                               checkpoint_every=5, progress=False),
        start_step=0, logger=logger, checkpointer=checkpointer)
  logger.close()
  assert str(error.value) == (
      "loss diverged at step 13: 1e+08 is more than 1e+06x its reference "
      "1.06 (median |value| of the first 5 logged); stopped without saving; "
      f"last good checkpoint: step 10 in {checkpointer.directory}")
  assert checkpointer.all_steps() == [5, 10]
  checkpointer.close()
  assert isinstance(error.value, experiment.NonFiniteLossError)  # exit 1


def test_divergence_reference_survives_a_resume(tmp_path):
  """The reference is read back from metrics.jsonl, so a resumed run stops
  where the uninterrupted one would."""
  workdir = str(tmp_path)
  config = ml_collections.ConfigDict({"a": 1})
  logger = experiment.RunLogger(workdir, config)
  checkpointer = experiment.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _ = experiment.train_loop(
      {"step": jnp.zeros((), jnp.int32)}, jax.jit(_diverging_step),
      experiment.LoopOptions(num_steps=10, log_every=2, eval_every=100,
                             checkpoint_every=5, progress=False),
      start_step=0, logger=logger, checkpointer=checkpointer)
  logger.close()
  logger = experiment.RunLogger(workdir, config, resume_step=10)
  assert logger.values("train/loss", 5) == pytest.approx(
      [1.02, 1.04, 1.06, 1.08, 1.10])
  with pytest.raises(experiment.DivergenceError, match="at step 13"):
    experiment.train_loop(
        state, jax.jit(_diverging_step),
        experiment.LoopOptions(num_steps=40, log_every=2, eval_every=100,
                               checkpoint_every=5, progress=False),
        start_step=10, logger=logger, checkpointer=checkpointer)
  logger.close()
  checkpointer.close()


def test_copy_task_at_a_huge_learning_rate_stops_with_one_line(tmp_path):
  result = run_script(TINY, "--config.train.learning_rate=1e4",
                      "--config.train.clip_norm=1e30",
                      "--config.train.num_steps=400",
                      workdir=str(tmp_path / "lr"))
  assert result.returncode == 1, result.stderr[-2000:]
  (line,) = result.stderr.strip().splitlines()[-1:]
  assert line.startswith("error: ") and "stopped without saving" in line
  assert ("diverged" in line) or ("non-finite" in line)


# ---- --resume: what may change ---------------------------------------------------

def test_resume_may_change_cadence_and_extend_steps_only(finished, tmp_path):
  workdir = _copy_run(finished, tmp_path / "extended")
  config = tiny_config(num_steps=60)
  for key, value in [("run.progress", True), ("run.log_every", 5),
                     ("run.eval_every", 10), ("run.checkpoint_every", 30),
                     ("train.num_steps", 80)]:
    changed = ml_collections.ConfigDict(config.to_dict())
    section, name = key.split(".")
    changed[section][name] = value
    checkpointer, _ = experiment.prepare_workdir(
        workdir, changed, True,
        resume_may_change=configs.RESUME_MAY_CHANGE,
        resume_may_extend=configs.RESUME_MAY_EXTEND)
    checkpointer.close()
  for key, value, message in [
      ("train.num_steps", 40, "--resume may only increase it"),
      ("train.learning_rate", 0.5, r"--resume needs the same config \(it "
                                   r"may change only run\.progress")]:
    changed = ml_collections.ConfigDict(config.to_dict())
    section, name = key.split(".")
    changed[section][name] = value
    with pytest.raises(experiment.ConfigError, match=message):
      experiment.prepare_workdir(
          workdir, changed, True,
          resume_may_change=configs.RESUME_MAY_CHANGE,
          resume_may_extend=configs.RESUME_MAY_EXTEND)
  # The script: extending a finished run trains on to the new end.
  extended = script_module.run(tiny_config(num_steps=80), workdir, True)
  assert extended["status"] == "finished" and extended["step"] == 80
  steps = [row["step"] for row in jsonl_rows(workdir) if "train/loss" in row]
  assert steps == list(range(10, 81, 10))


# ---- config mistakes ------------------------------------------------------------

def test_copy_task_default_is_the_cpu_config_and_gpu_a_preset():
  assert configs.get_config().to_dict() == configs.cpu().to_dict()
  assert configs.get_config("gpu").to_dict() == configs.paper().to_dict()
  assert configs.get_config("gpu").model.hidden_size == 2048
  assert configs.get_config().model.hidden_size <= 256


@pytest.mark.parametrize("key,value,message", [
    ("train.learning_rate", float("inf"), "must be positive and finite"),
    ("train.eps", -1.0, "must be non-negative and finite"),
    ("train.clip_norm", float("nan"), "must be positive and finite"),
    ("model.hidden_size", 3_000_000, "must be small enough for memory"),
    ("train.batch_size", 10**9, "must be small enough for memory"),
])
def test_copy_task_range_errors(key, value, message):
  config = configs.tiny()
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(experiment.ConfigError) as error:
    experiment.check_config(config, configs.get_config(),
                            script_module.config_rules())
  assert str(error.value).startswith(f"config.{key.split('.')[0]}.") or (
      "hidden_size" in str(error.value))
  assert message in str(error.value) and "\n" not in str(error.value)


def test_wandb_without_wandb_is_one_line(monkeypatch):
  config = configs.tiny()
  config.run.wandb = True
  real = __import__("importlib.util").util.find_spec
  monkeypatch.setattr("importlib.util.find_spec",
                      lambda name, *a: None if name == "wandb" else real(name,
                                                                         *a))
  with pytest.raises(experiment.ConfigError) as error:
    experiment.check_config(config, configs.get_config(),
                            script_module.config_rules())
  assert str(error.value) == (
      'config.run.wandb: must be false: wandb is not installed (pip install '
      '-e ".[wandb]"), got True')


def test_unknown_preset_and_mistyped_key_are_one_line(tmp_path):
  preset = run_script("--config=experiments/configs/copy_task.py:tinyy",
                      workdir=str(tmp_path / "a"))
  assert preset.returncode == 1
  assert preset.stderr.strip().splitlines() == [
      "error: --config=experiments/configs/copy_task.py:tinyy: unknown "
      "config preset 'tinyy'; the presets are cpu, gpu, paper, tiny"]
  key = run_script(TINY, "--config.model.hiden_size=8",
                   workdir=str(tmp_path / "b"))
  assert key.returncode == 1
  assert key.stderr.strip().splitlines() == [
      "error: config.model.hiden_size: unknown key 'hiden_size' (did you mean "
      "'hidden_size'?)"]
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(
      tmp_path / "b")


def test_resume_of_a_missing_workdir_is_one_line(tmp_path):
  missing = str(tmp_path / "typo")
  result = run_script(TINY, "--resume", workdir=missing)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f"error: --resume: {missing} does not exist (no run to continue "
      "there); check the path, or drop --resume to start a new run in it"]
  assert not os.path.exists(missing)


def test_copy_task_prints_no_orbax_info(tmp_path):
  result = run_script(TINY, "--config.train.num_steps=40",
                      workdir=str(tmp_path / "quiet"))
  assert result.returncode == 0, result.stderr[-2000:]
  assert not [line for line in result.stderr.splitlines()
              if line.startswith("I") and "orbax" in line.lower()]
  assert len(result.stderr.strip().splitlines()) <= 2, result.stderr[-2000:]


# ---- kills at random moments ------------------------------------------------------

KILL_STEPS = 120
KILL_FLAGS = [TINY, f"--config.train.num_steps={KILL_STEPS}",
              "--config.run.checkpoint_every=20", "--config.run.eval_every=30"]


SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def kill_at_random_moments(start, workdir, wait, rng, max_kills, seconds):
  """Starts runs in `workdir` and signals each at a random moment, until
  `max_kills` signals were sent, `seconds` have passed or a run wrote
  results.json. Returns (kills, history).

  start(resume) -> a Popen of the script (resume: pass --resume);
  wait(process, rng) sleeps until a random moment and returns what it
  chose (for the history); the signal is one of SIGNALS, drawn after it.
  Each run must exit 0 (preempted: SIGTERM, SIGINT) or die of the SIGKILL,
  without a traceback. A final --resume is the caller's."""
  started, kills = time.time(), 0
  history = []     # what happened, for the failure messages
  while kills < max_kills and time.time() - started < seconds:
    process = start(os.path.exists(workdir))
    try:
      moment = wait(process, rng)
      signum = rng.choice(SIGNALS)
      if process.poll() is None:
        process.send_signal(signum)
        kills += 1
        history.append((signum.name, moment))
      stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
      if process.poll() is None:
        process.kill()
    history.append((process.returncode, stdout.strip().splitlines()[-1:],
                    checkpoint_steps(workdir)))
    assert process.returncode in (0, -signal.SIGKILL), (history,
                                                        stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    if os.path.exists(os.path.join(workdir, "results.json")):
      break
  return kills, history


def random_moment(workdir, num_steps, after):
  """wait(process, rng) for kill_at_random_moments: sleeps until a random
  moment of a run of `workdir` (`num_steps` loop steps, the unit its
  checkpoints are numbered in). A quarter of the time within the run's
  first 10 s (imports, tracing, restoring, compiling), but no later than
  this session's first new checkpoint, so that on a fast machine the run
  has not ended yet; else after a random checkpoint k of this session
  (past the one it resumed from, the last one included) was saved, by a
  random fraction of the time between this session's last two checkpoints (or
  `after` seconds without two), so that the signal lands in the step after
  k, its checkpoint save or, after the last one, the final evaluation and
  plot, on a slow machine or a fast one. Returns what it chose."""

  def wait(process, rng):
    resumed_from = (checkpoint_steps(workdir) or [0])[-1]
    if rng.random() < 0.25:
      limit, started = rng.uniform(0.5, 10.0), time.time()
      while (process.poll() is None and time.time() - started < limit
             and (checkpoint_steps(workdir) or [0])[-1] <= resumed_from):
        time.sleep(0.01)
      return ("start-up", round(time.time() - started, 2))
    step = min(num_steps, resumed_from + 1 + int(
        rng.random() * (num_steps - resumed_from)))
    fraction = rng.uniform(0.0, 1.0)
    seen = {}                 # checkpoint -> when it was first seen
    latest = resumed_from
    while process.poll() is None and latest < step:
      latest = (checkpoint_steps(workdir) or [0])[-1]
      if latest > resumed_from:
        seen.setdefault(latest, time.time())
      time.sleep(0.01)
    times = sorted(seen.values())
    delay = fraction * (times[-1] - times[-2] if len(times) > 1 else after)
    time.sleep(delay)
    return (f"checkpoint {step} +", round(delay, 2))

  return wait


def assert_same_rows_and_results(workdir, reference, history, rel=1e-6):
  """metrics.jsonl (but its timing column), metrics.csv, results.json and
  TensorBoard of `workdir` are those of `reference`: the same rows in the
  same order, none duplicated, none missing, values equal to `rel`.

  An evaluation's float scalars are compared to 1e-6: once in ~10 loaded
  copy-task runs a test/loss differed in its 7th digit with parameters
  equal bit for bit (XLA:CPU rounding)."""
  rows, reference_rows = (without_timing(jsonl_rows(w))
                          for w in (workdir, reference))
  assert [sorted(r) for r in rows] == [sorted(r) for r in reference_rows]
  for row, reference_row in zip(rows, reference_rows, strict=True):
    assert row == pytest.approx(reference_row, rel=rel, nan_ok=True), history
  assert len(csv_without_timing(workdir)) == len(
      csv_without_timing(reference))
  got, want = results(workdir), results(reference)
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    assert got[key] == (value if isinstance(value, str)
                        else pytest.approx(value, rel=rel, nan_ok=True)), (
                            key, history)
  assert_tensorboard_equals_jsonl(workdir)


def test_kills_at_random_moments_then_resume_end_like_an_uninterrupted_run(
    tmp_path):
  """Up to 6 kills (SIGKILL, SIGTERM, SIGINT) at random moments, a --resume
  after each, then one to the end: the final state, results.json,
  metrics.jsonl/csv and TensorBoard equal an uninterrupted run's."""
  reference = str(tmp_path / "reference")
  done = run_script(*KILL_FLAGS, workdir=reference)
  assert done.returncode == 0, done.stderr[-3000:]
  workdir = str(tmp_path / "killed")

  def start(resume):
    return _start(workdir, *KILL_FLAGS, *(["--resume"] if resume else []))

  kills, history = kill_at_random_moments(
      start, workdir, random_moment(workdir, KILL_STEPS, after=0.3),
      random.Random(18), max_kills=6, seconds=150)
  final = run_script(*KILL_FLAGS, "--resume", workdir=workdir)
  assert final.returncode == 0, final.stderr[-3000:]
  assert kills >= 2, history
  state, metadata = final_state(workdir)
  reference_state, reference_metadata = final_state(reference)
  assert metadata == reference_metadata, history
  assert_same_state(state, reference_state)
  assert_same_rows_and_results(workdir, reference, history)
