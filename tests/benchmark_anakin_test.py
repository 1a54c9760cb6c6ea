"""experiments/benchmark_anakin.py: a smoke run of its --quick mode.

Timings are not checked (they are noise at these sizes); the test checks that
the script runs both gradients, writes the CSV with every column, computes the
roofline fractions from its own measurements and writes a profiler trace.
"""

import csv
import math
import os
import subprocess
import sys

import pytest
from run_helpers import ROOT, unpinned_platform_environment

sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import benchmark_anakin
# pylint: enable=g-import-not-at-top,wrong-import-position


def test_quick_run_writes_csv_and_trace(tmp_path):
  trace_dir = tmp_path / "trace"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark_anakin", "--quick",
       f"--out_dir={tmp_path}", f"--trace_dir={trace_dir}"],
      cwd=ROOT, env=unpinned_platform_environment(), capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  # start_main quiets JAX's backend INFO lines (issue 18).
  assert "Unable to initialize backend" not in result.stderr
  with open(tmp_path / "benchmark_anakin.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["gradient"] for r in rows] == ["rtrl", "tbptt"]
  rtrl, tbptt = rows
  seconds = {r["gradient"]: float(r["ms_per_call"]) for r in rows}
  # Both rows carry the same per-size fractions, derived from the timings:
  # roofline = f·t_rtrl, and ceiling = roofline / (roofline + t_tbptt).
  fraction = float(rtrl["rtrl_fraction_of_roofline"])
  ceiling = float(rtrl["ceiling_fraction_of_roofline"])
  assert 0 < fraction and 0 < ceiling < 1
  roofline = fraction * seconds["rtrl"]
  assert math.isclose(ceiling, roofline / (roofline + seconds["tbptt"]),
                      rel_tol=1e-6)
  assert rtrl["ceiling_fraction_of_roofline"] == tbptt[
      "ceiling_fraction_of_roofline"]
  assert (rtrl["N"], rtrl["D"]) == ("16", "9")
  for gradient in ("rtrl", "tbptt"):
    folder = trace_dir / f"N16_D9_{gradient}"
    assert f"{folder}: longest XLA operations" in result.stdout
    assert any(name.endswith("perfetto_trace.json.gz")
               for _, _, names in os.walk(folder) for name in names)
    hlo = (folder / "optimized_hlo.txt").read_text()
    assert hlo.startswith("HloModule") and " fusion(" in hlo


def test_rows_are_handed_over_after_each_size():
  handed = []
  rows = benchmark_anakin.run([(4, 2), (6, 2)], num_envs=2, unroll_length=2,
                              updates_per_call=1, memory_length=2, rounds=1,
                              on_size=lambda r: handed.append(list(r)))
  assert [[r["N"] for r in h] for h in handed] == [[4, 4], [4, 4, 6, 6]]
  assert handed[-1] == rows
  # Without in_loop_pass its columns are there, and not a number.
  assert all(math.isnan(r[k]) for r in rows for k in (
      "in_loop_pass_ms", "in_loop_over_bare_pass", "rtrl_part_in_loop"))


def test_in_loop_pass_columns_come_from_the_third_call():
  rows = benchmark_anakin.run([(4, 2)], num_envs=2, unroll_length=2,
                              updates_per_call=2, memory_length=2, rounds=1,
                              in_loop_pass=True)
  rtrl, tbptt = rows
  assert rtrl["in_loop_pass_ms"] == tbptt["in_loop_pass_ms"]
  assert all(math.isfinite(rtrl[k]) or rtrl[k] == math.inf for k in (
      "in_loop_pass_ms", "in_loop_over_bare_pass", "rtrl_part_in_loop"))
  # in_loop_over_bare_pass = the in-loop pass over the bare pass, whose time
  # the bare_pass_GB_per_s column gives: 2·|S| bytes per pass.
  bare_seconds = (2 * rtrl["sensitivity_MiB"] * 2**20
                  / (rtrl["bare_pass_GB_per_s"] * 1e9))
  assert math.isclose(rtrl["in_loop_over_bare_pass"],
                      rtrl["in_loop_pass_ms"] / 1e3 / bare_seconds,
                      rel_tol=1e-6)


def test_the_optimizers_bare_pass_runs_once_per_update_and_changes_nothing():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  like = {"Z": jnp.zeros((2, 3, 4)), "b_z": jnp.zeros((2, 3))}
  optimizer = optax.rmsprop(0.1)
  probed = benchmark_anakin.with_bare_pass(like)(optimizer)
  params = {"w": jnp.arange(3.0)}
  gradient = {"w": jnp.array([1.0, -2.0, 0.5])}
  state, probed_state = optimizer.init(params), probed.init(params)
  update = jax.jit(probed.update)
  for _ in range(3):
    updates, state = optimizer.update(gradient, state, params)
    probed_updates, probed_state = update(gradient, probed_state, params)
    assert jax.tree.all(jax.tree.map(
        lambda a, b: bool(jnp.array_equal(a, b)), updates, probed_updates))
  # Three passes s <- (1 - 1e-3)·s + 1e-3 from zero: 1 - 0.999³ everywhere
  # (one pass too many or too few, or none, gives another value).
  buffer = probed_state[1]
  assert jax.tree.map(jnp.shape, buffer) == jax.tree.map(jnp.shape, like)
  for leaf in jax.tree.leaves(buffer):
    assert jnp.allclose(leaf, 1 - 0.999**3, rtol=1e-5)


def test_sizes_pair_hidden_and_features():
  assert benchmark_anakin.parse_sizes(["64", "512"], ["32", "256"]) == [
      (64, 32), (512, 256)]
  assert benchmark_anakin.parse_sizes(["64", "256"], ["32"]) == [
      (64, 32), (256, 32)]
  with pytest.raises(ValueError, match="'x' is not a positive int"):
    benchmark_anakin.parse_sizes(["64", "x"], ["32"])
  with pytest.raises(ValueError, match="2 values for 3 hidden sizes"):
    benchmark_anakin.parse_sizes(["1", "2", "3"], ["4", "5"])


def test_quick_runs_do_not_overwrite_the_committed_results():
  from experiments import timing  # pylint: disable=g-import-not-at-top
  flag = lambda value, present: type("Flag", (), {"value": value,
                                                  "present": present})()
  default = flag("docs/benchmarks", False)
  assert timing.output_dir(default, quick=False) == "docs/benchmarks"
  assert timing.output_dir(default, quick=True) == "runs/quick_benchmarks"
  assert timing.output_dir(flag("/tmp/b", True), quick=True) == "/tmp/b"
