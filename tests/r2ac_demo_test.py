"""experiments/r2ac_demo.py (`make demo`) and the short learning test CI runs:
on a MemoryChain whose span exceeds M, RTRL(M) learns and TBPTT(M) does not."""

import json
import subprocess
import sys

from run_helpers import ROOT, script_environment


def demo(*flags, workdir):
  return subprocess.run(
      [sys.executable, "-m", "experiments.r2ac_demo", *flags,
       f"--workdir={workdir}"], cwd=ROOT, env=script_environment(),
      capture_output=True, text=True, timeout=600)


def test_rtrl_learns_a_span_beyond_m_that_tbptt_does_not(tmp_path):
  """MemoryChain(L=5), M=2, the default config otherwise, 32k frames per
  seed, 2 seeds: every RTRL seed solves it with sampled actions (>= 0.8 over
  200 episodes), TBPTT(2) stays near chance (< 0.5)."""
  result = demo("--memory_length=5", "--unroll_length=2", "--frames=32000",
                "--seeds=2", "--eval_episodes=200", workdir=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / "results.json").read_text())
  assert summary["seeds"] == [0, 1]
  assert summary["rtrl"]["frames_per_seed"] == summary["tbptt"][
      "frames_per_seed"] == 32000
  assert min(summary["rtrl"]["sampled_return_per_seed"]) >= 0.8, summary
  assert summary["tbptt"]["sampled_return"] < 0.5, summary
  lines = result.stdout.splitlines()
  assert any(line.startswith("RTRL(2) on MemoryChain(L=5): sampled return")
             for line in lines)
  assert any(line.startswith("TBPTT(2) on MemoryChain(L=5): sampled return")
             for line in lines)
  with open(tmp_path / "demo.png", "rb") as file:
    assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_flag_is_a_one_line_error(tmp_path):
  result = demo("--seeds=0", workdir=tmp_path)
  assert result.returncode == 1
  assert "--seeds" in result.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "results.json").exists()
