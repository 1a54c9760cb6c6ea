"""Issue 18 for the R2AC scripts (experiments/r2ac_anakin.py and
experiments/r2ac_sebulba.py): sizes beyond memory are one line before
anything is allocated; --resume may extend the Anakin run's total_updates
(the learning-rate schedule stretched as printed); kills at random moments,
then --resume, end like an uninterrupted run.

The copy task's and the framework's versions of these tests are in
tests/interruption_test.py, whose helpers these reuse.
"""

import os
import subprocess
import sys

import pytest
from run_helpers import script_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.configs import r2ac as r2ac_configs
from experiments.configs import sebulba as sebulba_configs
from rtrl_jax import experiment
# pylint: enable=g-import-not-at-top,wrong-import-position

TIMEOUT = 240
SCRIPTS = {"anakin": ("experiments.r2ac_anakin", "r2ac.py", r2ac_configs),
           "sebulba": ("experiments.r2ac_sebulba", "sebulba.py",
                       sebulba_configs)}


def command(system, *flags):
  module, config_file, _ = SCRIPTS[system]
  return [sys.executable, "-m", module,
          f"--config=experiments/configs/{config_file}:tiny", *flags]


# ---- sizes beyond memory ------------------------------------------------------

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
