"""experiments/plot_runs.py: a plot from run folders, and one-line errors."""

import json
import subprocess
import sys

from run_helpers import ROOT, script_environment


def make_run(folder, mode, values):
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(
      {"train": {"mode": mode, "segment_length": 4, "update_every": "segment"}}))
  (folder / "metrics.jsonl").write_text("".join(
      json.dumps({"step": 10 * i, "valid/accuracy": v}) + "\n"
      for i, v in enumerate(values)))
  return str(folder)


def plot_runs(*flags):
  return subprocess.run([sys.executable, "-m", "experiments.plot_runs", *flags],
                        cwd=ROOT, env=script_environment(), capture_output=True,
                        text=True, timeout=120)


def test_plot_and_labels_from_config(tmp_path):
  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from experiments import plot_runs as script
  # pylint: enable=g-import-not-at-top
  rtrl = make_run(tmp_path / "rtrl", "rtrl", [0.1, 0.5, 0.9])
  bptt = make_run(tmp_path / "bptt", "bptt", [0.2, 0.3])
  assert script.run_label(rtrl) == "rtrl k=4, online"
  assert script.curve(rtrl, "valid/accuracy") == ([0, 10, 20], [0.1, 0.5, 0.9])
  out = tmp_path / "plot" / "accuracy.png"
  result = plot_runs(f"--runs={rtrl},{bptt}", f"--out={out}")
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == str(out) and out.stat().st_size > 0


def test_r2ac_runs_are_labelled_from_their_config(tmp_path):
  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from experiments import plot_runs as script
  # pylint: enable=g-import-not-at-top
  for name, extra, kind in (("anakin", {}, "anakin"),
                            ("sebulba", {"sebulba": {}}, "sebulba")):
    folder = tmp_path / name
    folder.mkdir()
    config = {"gradient": "rtrl", "unroll_length": 5,
              "network": {"core": "elstm", "hidden_size": 64}, **extra}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "train/episode_return_mean": 0.5}) + "\n")
    assert script.run_kind(config) == kind
    assert script.run_label(str(folder)) == "rtrl elstm-64 M=5"
  out = tmp_path / "returns.png"
  result = plot_runs(f"--runs={tmp_path / 'anakin'},{tmp_path / 'sebulba'}",
                     "--metric=train/episode_return_mean", f"--out={out}")
  assert result.returncode == 0, result.stderr
  assert out.stat().st_size > 0


def test_bad_runs_labels_and_metric_are_one_line_errors(tmp_path):
  run = make_run(tmp_path / "run", "bptt", [0.5])
  out = tmp_path / "out.png"
  for flags, message in (
      ([f"--runs={tmp_path / 'missing'}"], "error: --runs: "),
      ([f"--runs={run}", "--labels=a,b"],
       "error: --labels: 2 labels for 1 --runs entries"),
      ([f"--runs={run}", "--metric=valid/los"],
       f"error: --metric: {run!r} never logged 'valid/los'"),
      (["--runs="], "error: --runs: give at least one run folder"),
      ([f"--runs={run}", "extra"], "error: unexpected arguments ['extra']")):
    result = plot_runs(*flags, f"--out={out}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, (flags, lines)
    assert lines[0].startswith(message), (flags, lines)
  assert not out.exists()
