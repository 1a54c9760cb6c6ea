r"""Plots run logs (metrics.jsonl) as PNG curves, one line per run.

  python -m experiments.plot_runs --runs=runs/copy_cpu_bptt,runs/copy_cpu_tbptt4 \
      --metric=valid/accuracy --out=docs/copy_task_accuracy.png
  python -m experiments.plot_runs --runs=runs/r2ac_rtrl,runs/r2ac_tbptt \
      --metric=train/episode_return_mean      # -> runs/plots/train_episode_return_mean.png

Works on run folders of the copy task, R2AC Anakin and R2AC Sebulba. Each
run is labelled from its config.json (e.g. "rtrl k=1, online", "tbptt M=4,
per sequence" for the copy task; "rtrl elstm-64 M=5" for R2AC), or by
--labels. The x-axis is the logged step: training steps (copy task), calls of
the jitted update (Anakin) or learner updates (Sebulba).
"""

import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from rtrl_jax.rl import evaluation  # pylint: disable=wrong-import-position
from rtrl_jax import experiment  # pylint: disable=wrong-import-position
from rtrl_jax.tasks.from_config import describe_training  # pylint: disable=wrong-import-position

_RUNS = flags.DEFINE_list("runs", None, "Run folders.", required=True)
_LABELS = flags.DEFINE_list("labels", None, "One label per run (optional).")
_METRIC = flags.DEFINE_string("metric", "valid/accuracy", "Scalar to plot.")
_OUT = flags.DEFINE_string(
    "out", None, "PNG path (default runs/plots/<metric>.png).")
_TITLE = flags.DEFINE_string("title", "", "Plot title.")


def run_kind(config):
  """"copy_task", "anakin" or "sebulba": which script wrote `config`."""
  if "train" in config and "mode" in config["train"]:
    return "copy_task"
  return "sebulba" if evaluation.is_sebulba_run(config) else "anakin"


STEP_LABELS = {"copy_task": "training steps (batches of sequences)",
               "anakin": "calls of the jitted update",
               "sebulba": "learner updates"}


def run_label(workdir):
  """The run's mode from its config.json: "rtrl k=1, online" (copy task) or
  "rtrl elstm-64 M=5" (R2AC)."""
  config = evaluation.load_run_config(workdir)
  if run_kind(config) == "copy_task":
    return describe_training(config["train"])
  network = config["network"]
  return (f"{config['gradient']} {network['core']}-{network['hidden_size']} "
          f"M={config['unroll_length']}")


def curve(workdir, metric):
  """(steps, values) of `metric` in the run's metrics.jsonl."""
  rows = [row for row in experiment.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if metric in row]
  return [row["step"] for row in rows], [row[metric] for row in rows]


def plot(workdirs, metric, out, labels=None, title="", step_label="step"):
  labels = labels or [run_label(w) for w in workdirs]
  figure, axes = plt.subplots(figsize=(7, 4.2))
  for workdir, label in zip(workdirs, labels):
    steps, values = curve(workdir, metric)
    axes.plot(steps, values, label=label)
  axes.set_xlabel(step_label)
  axes.set_ylabel(metric)
  axes.set_title(title)
  axes.grid(alpha=0.3)
  axes.legend()
  figure.tight_layout()
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  figure.savefig(out, dpi=110)
  plt.close(figure)


def main(argv):
  experiment.cli.start_main(argv)
  runs = _RUNS.value
  if not runs:
    sys.exit("error: --runs: give at least one run folder")
  if _LABELS.value and len(_LABELS.value) != len(runs):
    sys.exit(f"error: --labels: {len(_LABELS.value)} labels for "
             f"{len(runs)} --runs entries; give one label per run")
  for workdir in runs:
    missing = [name for name in ("metrics.jsonl", "config.json")
               if not os.path.exists(os.path.join(workdir, name))]
    if missing:
      sys.exit(f"error: --runs: {workdir!r} has no {' or '.join(missing)} "
               "(not a run folder?)")
    if not curve(workdir, _METRIC.value)[0]:
      sys.exit(f"error: --metric: {workdir!r} never logged {_METRIC.value!r}")
  kinds = {run_kind(evaluation.load_run_config(workdir)) for workdir in runs}
  step_label = STEP_LABELS[kinds.pop()] if len(kinds) == 1 else "logged step"
  out = _OUT.value or os.path.join(
      "runs", "plots", _METRIC.value.replace("/", "_") + ".png")
  try:
    plot(runs, _METRIC.value, out, _LABELS.value, _TITLE.value, step_label)
  except OSError as error:
    sys.exit(f"error: --out: {error}")
  print(out)


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
