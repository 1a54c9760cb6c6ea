"""experiments/r2ac_sebulba.py end to end: logs, SIGTERM checkpoint, resume,
config errors. Subprocesses with timeouts share a JAX compilation cache."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from run_helpers import (checkpoint_steps, script_environment,
                         strict_json_loads)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from rtrl_jax import experiment
# pylint: enable=g-import-not-at-top,wrong-import-position

pytest.importorskip("envpool")

UPDATES = 300
FLAGS = ["--config=experiments/configs/sebulba.py:tiny",
         f"--config.total_updates={UPDATES}", "--config.run.checkpoint_every=25",
         "--config.run.log_every=5"]
TIMEOUT = 240


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
  env = script_environment(tmp_path_factory.mktemp("jax_cache"))
  env["XLA_FLAGS"] = " ".join(  # one CPU device per process
      f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
  return env


def command(*flags):
  return [sys.executable, "-m", "experiments.r2ac_sebulba", *flags]


@pytest.mark.timeout(2 * TIMEOUT + 30)
def test_sigterm_saves_and_resume_finishes(tmp_path, environment):
  workdir = str(tmp_path / "run")
  process = subprocess.Popen(command(*FLAGS, f"--workdir={workdir}"),
                             cwd=ROOT, env=environment, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + TIMEOUT
  try:
    while not checkpoint_steps(workdir):
      assert process.poll() is None, process.stderr.read()[-3000:]
      assert time.time() < deadline, "no checkpoint in time"
      time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 0, stderr[-3000:]
  result = json.loads(stdout.strip().splitlines()[-1])
  assert result["status"] == "preempted"
  stopped = result["update"]
  assert stopped in checkpoint_steps(workdir)
  assert (f"{workdir}: stopped at update {stopped}; the same command with "
          "--resume continues it") in stderr
  rows = experiment.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  logged = [r for r in rows if "train/sps" in r]
  assert logged, rows
  for key in ("train/time/actor/env_recv", "train/time/actor/env_send",
              "train/time/actor/inference", "train/time/actor/transfer",
              "train/time/learner/queue_get", "train/time/learner/step",
              "train/policy_lag_mean", "train/env_steps"):
    assert key in logged[-1], key

  refused = subprocess.run(
      command(*FLAGS, "--config.unroll_length=5", f"--workdir={workdir}",
              "--resume"),
      cwd=ROOT, env=environment, capture_output=True, text=True,
      timeout=TIMEOUT)
  assert refused.returncode == 1
  assert "--resume needs the same config" in refused.stderr

  # A run from before sebulba.env_groups existed resumes with its value 1.
  config_path = os.path.join(workdir, "config.json")
  with open(config_path) as f:
    saved = json.load(f)
  assert saved["sebulba"].pop("env_groups") == 1
  with open(config_path, "w") as f:
    json.dump(saved, f)
  resumed = subprocess.run(
      command(*FLAGS, f"--workdir={workdir}", "--resume"),
      cwd=ROOT, env=environment, capture_output=True, text=True,
      timeout=TIMEOUT)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed {workdir} from update {stopped}" in resumed.stdout
  lines = resumed.stdout.strip().splitlines()
  result = strict_json_loads(lines[-4])
  assert result["status"] == "finished" and result["update"] == UPDATES
  assert 0.0 <= result["window/episode_return_mean"] <= 1.0
  assert result["plot"] == os.path.join(workdir, "return_vs_frames.png")
  assert os.path.getsize(result["plot"]) > 0
  assert lines[-1] == (
      f"evaluate: python -m experiments.evaluate_r2ac --workdir={workdir}")
  logged = [r for r in experiment.read_jsonl(
      os.path.join(workdir, "metrics.jsonl")) if "train/sps" in r]
  steps = [r["step"] for r in logged]
  assert steps == sorted(set(steps)) and steps[-1] == UPDATES
  # Environment steps count from the run's start, across the resume.
  seb = saved["sebulba"]
  per_update = (seb["num_actor_threads"] * seb["num_envs_per_thread"]
                * saved["unroll_length"])
  assert [r["train/env_steps"] for r in logged] == [
      s * per_update for s in steps]

  with open(os.path.join(workdir, "results.json")) as f:
    saved = f.read()
  again = subprocess.run(
      command(*FLAGS, f"--workdir={workdir}", "--resume"),
      cwd=ROOT, env=environment, capture_output=True, text=True,
      timeout=TIMEOUT)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "finished before" in again.stdout
  assert f"plot: {result['plot']}" in again.stdout    # where to look, again
  with open(os.path.join(workdir, "results.json")) as f:
    assert f.read() == saved

  # The finished run evaluates on its envpool environment.
  evaluated = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate_r2ac", f"--workdir={workdir}",
       "--seeds=2", "--episodes=4"],
      cwd=ROOT, env=environment, capture_output=True, text=True,
      timeout=TIMEOUT)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert f"checkpoint of update {UPDATES}, MiniGrid-MemoryS7-v0" in (
      evaluated.stdout)
  with open(os.path.join(workdir, "evaluation.json")) as f:
    evaluation = json.load(f)
  assert evaluation["update"] == UPDATES
  for actions in ("greedy", "sampled"):
    summary = evaluation[actions]
    assert (summary["seeds"], summary["episodes_per_seed"]) == (2, 4)
    assert 0.0 <= summary["mean"] <= 1.0   # MiniGrid: 0, or 1 - 0.9 t/T


@pytest.mark.timeout(120)
def test_bad_config_is_one_line(environment, tmp_path):
  result = subprocess.run(
      command("--config=experiments/configs/sebulba.py:tiny",
              "--config.sebulba.num_actor_thread=2", "--workdir=/tmp/unused"),
      cwd=ROOT, env=environment, capture_output=True, text=True, timeout=100)
  assert result.returncode == 1
  assert result.stderr.strip().startswith("error: config.sebulba."), (
      result.stderr)
  # An option envpool would take silently; the system rejects it before the
  # run folder exists.
  workdir = tmp_path / "run"
  result = subprocess.run(
      command("--config=experiments/configs/sebulba.py:tiny",
              "--config.env.kwargs.max_episode_steps=0", f"--workdir={workdir}"),
      cwd=ROOT, env=environment, capture_output=True, text=True, timeout=100)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      "error: env.kwargs.max_episode_steps=0: must be an int >= 1"]
  assert not workdir.exists()


@pytest.mark.timeout(200)
@pytest.mark.parametrize("flags,message", [
    (["--config.sebulba.learner_device_ids=(3,)", "--workdir={run}"],
     "error: sebulba.learner_device_ids=(3,): must be distinct local device "
     "indices, and this process has 1 device(s) (0..0)"),
    (["--num_processes=2", "--process_id=0", "--workdir={run}"],
     "error: --num_processes and --process_id need --coordinator_address "
     "(or --distributed); without it this would run as one process"),
    (["--resume"],
     "error: --resume needs --workdir: the folder of the run to continue"),
    (["--workdir={file}"], "error: --workdir: {file} is a file, not a folder"),
])
def test_bad_devices_processes_and_workdirs_are_one_line(
    environment, tmp_path, flags, message):
  paths = {"run": tmp_path / "run", "file": tmp_path / "file"}
  paths["file"].write_text("")
  result = subprocess.run(
      command("--config=experiments/configs/sebulba.py:tiny",
              *[f.format(**paths) for f in flags]),
      cwd=ROOT, env=environment, capture_output=True, text=True, timeout=100)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [message.format(**paths)]
  assert not paths["run"].exists()


def test_every_named_config_passes_the_checks():
  # pylint: disable=g-import-not-at-top
  from experiments.configs import sebulba as configs
  # pylint: enable=g-import-not-at-top
  for name in configs.CONFIGS:
    configs.check(configs.get_config(name))
  config = configs.tiny()
  config.sebulba.queue_size = 0
  with pytest.raises(experiment.ConfigError,
                     match=r"^config.sebulba.queue_size: must be a positive"):
    configs.check(config)
  config = configs.tiny()
  config.gradient = "bptt"
  with pytest.raises(experiment.ConfigError,
                     match=r"^config.gradient: must be 'rtrl' or 'tbptt' "
                     r"\(full-episode 'bptt' needs unrolls aligned"):
    configs.check(config)
