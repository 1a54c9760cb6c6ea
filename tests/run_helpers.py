"""Helpers for tests that run experiment scripts as subprocesses."""

import json
import os
import subprocess
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_environment(cache_dir=None):
  """os.environ for a script subprocess: the repo importable, CPU JAX and,
  with `cache_dir`, a persistent compilation cache shared by the runs."""
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  if cache_dir is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def unpinned_platform_environment():
  """script_environment() without JAX_PLATFORMS, so that JAX probes its
  backends as on a user's machine (and would log the TPU probe's INFO line
  unless the script quiets it)."""
  env = script_environment()
  del env["JAX_PLATFORMS"]
  return env


def strict_json_loads(text):
  """json.loads that refuses NaN and Infinity (not JSON, though Python writes
  them by default)."""
  def refuse(constant):
    raise ValueError(f"non-standard JSON constant {constant}")
  return json.loads(text, parse_constant=refuse)


def checkpoint_steps(workdir):
  """Steps of the checkpoints in `workdir`/checkpoints, read without orbax
  (safe to poll while another process is writing)."""
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def signal_after_checkpoint(command, env, workdir, after_step, signum,
                            timeout):
  """Starts `command`; sends `signum` once checkpoint `after_step` exists.

  Returns (returncode, stderr). Fails if the run ends first or nothing is
  saved within `timeout` seconds.
  """
  process = subprocess.Popen(command, cwd=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.time() + timeout
  while not [s for s in checkpoint_steps(workdir) if s >= after_step]:
    if process.poll() is not None:
      raise AssertionError(f"run ended early:\n{process.stderr.read()[-3000:]}")
    if time.time() > deadline:
      process.kill()
      raise AssertionError("timed out waiting for a checkpoint")
    time.sleep(0.02)
  process.send_signal(signum)
  _, stderr = process.communicate(timeout=timeout)
  return process.returncode, stderr
