r"""Plots run logs (metrics.jsonl) as PNG curves, one line per run.

  python -m experiments.plot_runs --runs=runs/copy_cpu_bptt,runs/copy_cpu_tbptt4 \
      --metric=valid/accuracy --out=docs/copy_task_accuracy.png

Each run is labelled by its mode from config.json (e.g. "rtrl k=1, online",
"tbptt M=4, per sequence", "bptt"), or by --labels.
"""

import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from rtrl_jax import experiment  # pylint: disable=wrong-import-position
from rtrl_jax.copy_task import describe_training  # pylint: disable=wrong-import-position

_RUNS = flags.DEFINE_list("runs", None, "Run folders.", required=True)
_LABELS = flags.DEFINE_list("labels", None, "One label per run (optional).")
_METRIC = flags.DEFINE_string("metric", "valid/accuracy", "Scalar to plot.")
_OUT = flags.DEFINE_string("out", "docs/copy_task_accuracy.png", "PNG path.")
_TITLE = flags.DEFINE_string("title", "", "Plot title.")


def run_label(workdir):
  """"mode k/M, online|per sequence" from the run's config.json."""
  with open(os.path.join(workdir, "config.json")) as f:
    return describe_training(json.load(f)["train"])


def curve(workdir, metric):
  """(steps, values) of `metric` in the run's metrics.jsonl."""
  rows = [row for row in experiment.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if metric in row]
  return [row["step"] for row in rows], [row[metric] for row in rows]


def plot(workdirs, metric, out, labels=None, title=""):
  labels = labels or [run_label(w) for w in workdirs]
  figure, axes = plt.subplots(figsize=(7, 4.2))
  for workdir, label in zip(workdirs, labels):
    steps, values = curve(workdir, metric)
    axes.plot(steps, values, label=label)
  axes.set_xlabel("training steps (batches of sequences)")
  axes.set_ylabel(metric)
  axes.set_title(title)
  axes.grid(alpha=0.3)
  axes.legend()
  figure.tight_layout()
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  figure.savefig(out, dpi=110)
  plt.close(figure)


def main(argv):
  del argv
  if _LABELS.value and len(_LABELS.value) != len(_RUNS.value):
    sys.exit(f"error: --labels: {len(_LABELS.value)} labels for "
             f"{len(_RUNS.value)} --runs "
             "entries; give one label per run")
  needed = ["metrics.jsonl"] + ([] if _LABELS.value else ["config.json"])
  for workdir in _RUNS.value:
    missing = [name for name in needed
               if not os.path.exists(os.path.join(workdir, name))]
    if missing:
      sys.exit(f"error: --runs: {workdir!r} has no {' or '.join(missing)} "
               "(not a run folder?)")
    if not curve(workdir, _METRIC.value)[0]:
      sys.exit(f"error: --metric: {workdir!r} never logged {_METRIC.value!r}")
  plot(_RUNS.value, _METRIC.value, _OUT.value, _LABELS.value, _TITLE.value)
  print(_OUT.value)


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
