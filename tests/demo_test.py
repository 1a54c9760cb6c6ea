"""experiments/demo.py (`make demo-rtrl`): a short run prints both methods'
rows; bad sizes are one-line errors."""

import subprocess
import sys

import pytest
from run_helpers import ROOT, unpinned_platform_environment


def demo(*flags):
  return subprocess.run([sys.executable, "-m", "experiments.demo", *flags],
                        cwd=ROOT, env=unpinned_platform_environment(),
                        capture_output=True, text=True, timeout=240)


def test_short_run_reports_rtrl_and_tbptt():
  result = demo("--steps=20", "--hidden=8", "--batch=4")
  assert result.returncode == 0, result.stderr[-3000:]
  # The flag's meaning, and no JAX backend INFO lines (start_main quiets them).
  assert "Recall a cue 7 steps later (episodes of 8 steps)" in result.stdout
  assert "Unable to initialize backend" not in result.stderr
  rows = result.stdout.strip().splitlines()[-2:]
  assert [row.split()[0] for row in rows] == ["rtrl", "tbptt"]
  for row in rows:
    accuracy = float(row.split()[1].rstrip("%"))
    assert 0.0 <= accuracy <= 100.0


@pytest.mark.parametrize("flag", ["--steps=0", "--hidden=0", "--segment=-1",
                                  "--episode=0", "--batch=0"])
def test_bad_sizes_are_one_line_errors(flag):
  result = demo(flag)
  assert result.returncode == 1
  name, value = flag[2:].split("=")
  assert result.stderr.strip().splitlines() == [
      f"error: flag --{name}={value}: {value} is not a positive integer"]
