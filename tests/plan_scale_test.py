"""experiments/plan_scale.py: its arithmetic against the code, and its CLI."""

import csv
import math
import subprocess
import sys

import jax
import numpy as np
import pytest
from run_helpers import ROOT, script_environment

import rtrl_jax

sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import plan_scale
# pylint: enable=g-import-not-at-top,wrong-import-position


def allocated_sensitivity_numbers(name, hidden, input_size):
  """Numbers per example in the state `initial_state` builds (traced only)."""
  cell = rtrl_jax.CELLS[name](hidden)
  state = jax.eval_shape(lambda key: cell.initial_state(
      cell.init(key, input_size), 3), jax.random.PRNGKey(0))
  return sum(math.prod(leaf.shape) for leaf in
             jax.tree.leaves(state.sensitivities)) // 3


@pytest.mark.parametrize("name", list(rtrl_jax.CELLS))
@pytest.mark.parametrize("hidden,input_size", [(512, 257), (7, 3)])
def test_sensitivity_size_is_what_the_cell_allocates(name, hidden, input_size):
  assert set(plan_scale.CELL_CHOICES) == set(rtrl_jax.CELLS)
  assert plan_scale.sensitivity_floats(name, hidden, input_size) == (
      allocated_sensitivity_numbers(name, hidden, input_size))


def test_elstm_bytes_per_device():
  """N=512, D=257: (2ND + 4N)·4 bytes = 1,060,864 per environment."""
  rows = plan_scale.plan("elstm", 512, 257, 1024, 10, ["h100"])
  assert rows[0]["sensitivity_bytes_per_device"] == 1024 * 1_060_864
  assert rows[0]["resident_bytes_per_device"] == 2 * 1024 * 1_060_864


def test_roofline_of_each_actor():
  """Per M environment steps: 1.5·2·|S| bytes with the Anakin actor (one
  read+write of S per unroll, the default), (M + ½)·2·|S| with an actor
  that steps S every step; the learner's ½ pass is the same."""
  per_env, unroll, bandwidth = 1_060_864, 10, 3.35e12
  actor, learner = plan_scale.roofline_seconds(per_env, unroll, bandwidth)
  assert actor == pytest.approx(2 * per_env / (unroll * bandwidth))
  assert actor + learner == pytest.approx(
      1.5 * 2 * per_env / (unroll * bandwidth))
  stepping, same_learner = plan_scale.roofline_seconds(
      per_env, unroll, bandwidth, "every_step")
  assert stepping == pytest.approx(2 * per_env / bandwidth)
  assert same_learner == learner
  with pytest.raises(ValueError, match="'sometimes'"):
    plan_scale.roofline_seconds(per_env, unroll, bandwidth, "sometimes")


def test_largest_batch_is_the_largest_that_fits():
  per_env, memory = 1_060_864, 80e9
  batch = plan_scale.largest_batch(per_env, memory)
  budget = plan_scale.MEMORY_FRACTION * memory
  assert plan_scale.COPIES * batch * per_env <= budget
  assert plan_scale.COPIES * (batch + 1) * per_env > budget
  fixed = 10e9
  batch = plan_scale.largest_batch(per_env, memory, copies=1,
                                   fixed_bytes=fixed)
  assert fixed + batch * per_env <= budget < fixed + (batch + 1) * per_env
  assert plan_scale.largest_batch(per_env, memory, fixed_bytes=budget + 1) == 0


def test_every_device_has_a_cited_source():
  for name, spec in plan_scale.DEVICES.items():
    assert spec["source"].startswith("https://"), name
    assert spec["memory"] > 1e9 and spec["bandwidth"] > 1e11, name


def test_cpu_bandwidth_is_measured():
  assert 1e8 < plan_scale.measure_cpu_bandwidth(megabytes=16, repeats=2) < 1e13


def run(*args):
  return subprocess.run(
      [sys.executable, "-m", "experiments.plan_scale", *args], cwd=ROOT,
      env=script_environment(), capture_output=True, text=True, timeout=120)


ISSUE_FLAGS = ("--cell=elstm", "--hidden=512", "--input=257",
               "--envs_per_device=1024", "--unroll=10")


def test_cli_one_device():
  result = run(*ISSUE_FLAGS, "--device=h100")
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "computed, not measured" in out
  assert "https://www.nvidia.com/en-us/data-center/h100/" in out
  row = next(line for line in out.splitlines() if line.startswith("h100 "))
  # 2·1,060,864 B / 3.35 TB/s = 633.4 ns per read+write of S, once per
  # unroll of M = 10 steps: 63.3 ns per step; 28,278 environments fit.
  assert "63.3" in row and "28,278" in row and " yes " in row
  assert "the actor advances S once per unroll" in out
  stepping = run(*ISSUE_FLAGS, "--device=h100", "--actor=every_step").stdout
  row = next(line for line in stepping.splitlines() if line.startswith("h100 "))
  assert "633.4" in row and "28,278" in row


def test_cli_all_devices_with_a_measured_cpu_row():
  result = run(*ISSUE_FLAGS, "--device=all")
  assert result.returncode == 0, result.stderr
  names = [line.split()[0] for line in result.stdout.splitlines()
           if line.split() and line.split()[0] in plan_scale.DEVICE_CHOICES]
  assert names == list(plan_scale.DEVICES) + ["cpu"]
  assert "measured here" in result.stdout


def test_cli_says_when_a_batch_does_not_fit():
  result = run("--hidden=2048", "--input=1025", "--envs_per_device=4096",
               "--unroll=10", "--device=tpu_v5e")
  assert result.returncode == 0, result.stderr
  row = next(line for line in result.stdout.splitlines()
             if line.startswith("tpu_v5e"))
  assert " NO " in row


@pytest.mark.parametrize("flag,named", [
    ("--hidden=0", "'0'"), ("--hidden=abc", "'abc'"),
    ("--unroll=-3", "'-3'"), ("--envs_per_device=1.5", "'1.5'"),
    ("--device=h800", "'h800'"), ("--cell=gru", "'gru'"),
    ("--dtype=int8", "'int8'"), ("--check_csv=/no/such.csv", "/no/such.csv"),
    ("--actor=sometimes", "'sometimes'"),
    ("--memory=disk", "'disk'"),
])
def test_cli_bad_flag_is_a_one_line_error(flag, named):
  flags = [f for f in ISSUE_FLAGS + ("--device=h100",)
           if f.split("=")[0] != flag.split("=")[0]]
  result = run(*flags, flag)
  assert result.returncode != 0
  assert result.stdout == ""
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
  assert named in lines[0], lines[0]


def write_benchmark_csv(path, bandwidth, slowdown, mib_error=0.0):
  """A benchmark_anakin-style CSV whose RTRL part is `slowdown` × the
  roofline at `bandwidth` (N=64, D=33, B=64, M=5, 20 updates per call)."""
  n, d, b, m, updates = 64, 33, 64, 5, 20
  per_env = (2 * n * d + 4 * n) * 4
  roofline = sum(plan_scale.roofline_seconds(per_env, m, bandwidth))
  tbptt_ms = 30.0
  rtrl_ms = tbptt_ms + 1e3 * slowdown * roofline * updates * b * m
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=[
        "N", "D", "B", "M", "updates_per_call", "gradient", "ms_per_call",
        "sensitivity_MiB", "bare_pass_GB_per_s"])
    writer.writeheader()
    for gradient, ms in (("rtrl", rtrl_ms), ("tbptt", tbptt_ms)):
      writer.writerow(dict(N=n, D=d, B=b, M=m, updates_per_call=updates,
                           gradient=gradient, ms_per_call=ms,
                           sensitivity_MiB=b * per_env / 2**20 + mib_error,
                           bare_pass_GB_per_s=bandwidth / 1e9))


@pytest.mark.parametrize("slowdown,mib_error,ok", [
    (2.0, 0.0, True), (0.5, 0.0, False), (plan_scale.CHECK_FACTOR * 1.5, 0.0,
                                          False), (2.0, 0.01, False)])
def test_check_against_a_measured_csv(tmp_path, slowdown, mib_error, ok):
  path = tmp_path / "benchmark_anakin.csv"
  write_benchmark_csv(path, 20e9, slowdown, mib_error)
  lines, passed = plan_scale.check_against_csv(str(path), 20e9)
  assert passed == ok, "\n".join(lines)
  ratio = float(lines[2].split()[-2])
  assert ratio == pytest.approx(slowdown)


def test_cli_check_fails_with_one_line(tmp_path):
  path = tmp_path / "benchmark_anakin.csv"
  write_benchmark_csv(path, 20e9, 2.0, mib_error=1.0)
  result = run(*ISSUE_FLAGS, "--device=cpu", f"--check_csv={path}")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      "error: the cpu model is off the measured run (see above)"]
  assert " NO" in result.stdout


@pytest.mark.parametrize("platform,kind,name", [
    ("gpu", "NVIDIA H200", "h200"), ("gpu", "NVIDIA H100 80GB HBM3", "h100"),
    ("gpu", "NVIDIA A100-SXM4-80GB", "a100"), ("tpu", "TPU v4", "tpu_v4"),
    ("tpu", "TPU v5 lite", "tpu_v5e"), ("tpu", "TPU v5p", "tpu_v5p"),
    ("cpu", "cpu", "cpu")])
def test_detect_device(platform, kind, name):
  assert plan_scale.detect_device(platform, kind) == name


def test_detect_unknown_device_names_it():
  with pytest.raises(ValueError, match="'NVIDIA GeForce RTX 4090'"):
    plan_scale.detect_device("gpu", "NVIDIA GeForce RTX 4090")


def test_check_uses_the_published_bandwidth_of_an_accelerator(tmp_path):
  """--device=h200 --check_csv: the CSV's run is checked against 4.8 TB/s."""
  path = tmp_path / "benchmark_anakin.csv"
  write_benchmark_csv(path, 4.8e12, 2.0)
  result = run(*ISSUE_FLAGS, "--device=h200", f"--check_csv={path}")
  assert result.returncode == 0, result.stdout + result.stderr
  assert "h200 roofline at 4800.0 GB/s, published, not measured" in (
      result.stdout)


def test_cli_detect_on_this_machine():
  result = run(*ISSUE_FLAGS, "--device=detect")
  assert result.returncode == 0, result.stderr
  assert any(line.startswith("cpu ") for line in result.stdout.splitlines())


SMALL = dict(hidden=16, input_size=9, unroll=3)


def test_compiled_memory_holds_s_and_grows_linearly():
  """--memory=compiled: each environment adds at least its S to the
  compiled Anakin update (held once: see
  tests/anakin_deferred_test.py::test_compiled_update_writes_s_in_place),
  and the line fitted at MEMORY_BATCHES predicts the program at 4x the
  batch within 2%."""
  s = plan_scale.sensitivity_floats(
      "elstm", SMALL["hidden"], SMALL["input_size"]) * 4
  fixed, per_env = plan_scale.compiled_memory(**SMALL)
  assert per_env >= s
  high = plan_scale.MEMORY_BATCHES[1]
  far_fixed, far_per_env = plan_scale.compiled_memory(
      **SMALL, batches=(2 * high, 4 * high))
  assert fixed + 4 * high * per_env == pytest.approx(
      far_fixed + 4 * high * far_per_env, rel=0.02)


def test_cli_compiled_memory_sets_the_largest_batch():
  fixed, per_env = plan_scale.compiled_memory(**SMALL)
  result = run(f"--hidden={SMALL['hidden']}", f"--input={SMALL['input_size']}",
               f"--unroll={SMALL['unroll']}", "--envs_per_device=1024",
               "--device=tpu_v5e", "--memory=compiled")
  assert result.returncode == 0, result.stderr
  assert "from the compiled program (CPU compiler)" in result.stdout
  row = next(line for line in result.stdout.splitlines()
             if line.startswith("tpu_v5e"))
  expected = plan_scale.largest_batch(
      per_env, plan_scale.DEVICES["tpu_v5e"]["memory"], copies=1,
      fixed_bytes=fixed)
  assert f" {expected:,} " in row
  assert expected != plan_scale.largest_batch(
      plan_scale.sensitivity_floats("elstm", SMALL["hidden"],
                                    SMALL["input_size"]) * 4,
      plan_scale.DEVICES["tpu_v5e"]["memory"])


def test_cli_compiled_memory_of_another_cell_is_one_line():
  result = run(*ISSUE_FLAGS[1:], "--cell=indrnn", "--device=h100",
               "--memory=compiled")
  assert result.returncode != 0 and result.stdout == ""
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "--cell=indrnn" in lines[0], result.stderr
