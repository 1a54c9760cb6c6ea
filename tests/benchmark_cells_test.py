"""experiments/benchmark_cells.py (`make bench`): a smoke run of --quick.

Timings are not checked (noise); the test checks every method is measured
at every size, the sensitivity memory is the eLSTM's 2·N·D + 4·N floats
per example, and the CSV and plot are written."""

import csv
import subprocess
import sys

from run_helpers import ROOT, unpinned_platform_environment


def test_quick_run_writes_csv_and_plot(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark_cells", "--quick",
       f"--out_dir={tmp_path}"], cwd=ROOT, env=unpinned_platform_environment(),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  # start_main quiets JAX's backend INFO lines (issue 18).
  assert "Unable to initialize backend" not in result.stderr
  with open(tmp_path / "benchmark_cells.csv") as f:
    rows = list(csv.DictReader(f))
  sizes = {(r["N"], r["T"]) for r in rows}
  methods = {r["method"] for r in rows}
  assert {"rtrl fwd", "rtrl grad", "bptt grad", "bare pass"} <= methods
  assert len(rows) == len(sizes) * len(methods)
  for row in rows:
    n, d, b = int(row["N"]), int(row["D"]), int(row["B"])
    floats = b * (2 * n * d + 4 * n)
    assert abs(float(row["sensitivity_MiB"]) - 4 * floats / 2**20) < 1e-6
    assert float(row["ms_per_step"]) > 0
    assert 0 < float(row["rtrl_fwd_fraction_of_roofline"])
  assert (tmp_path / "benchmark_cells.png").stat().st_size > 0
  assert f"wrote {tmp_path}/benchmark_cells.csv" in result.stdout
