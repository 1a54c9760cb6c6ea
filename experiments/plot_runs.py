r"""Plots run logs (metrics.jsonl) as PNG curves, one line per run.

  python -m experiments.plot_runs --runs=runs/copy_cpu_bptt,runs/copy_cpu_tbptt4 \
      --metric=valid/accuracy --out=docs/copy_task_accuracy.png

Each run is labelled by its mode from config.json (e.g. "rtrl k=1, online",
"tbptt M=4, per sequence", "bptt"), or by --labels.
"""

import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from rtrl_jax.copy_task import describe_training  # pylint: disable=wrong-import-position
from rtrl_jax.experiment import read_jsonl  # pylint: disable=wrong-import-position

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
  rows = [row for row in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
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
    raise app.UsageError("--labels needs one label per --runs entry")
  plot(_RUNS.value, _METRIC.value, _OUT.value, _LABELS.value, _TITLE.value)
  print(_OUT.value)


if __name__ == "__main__":
  app.run(main)
