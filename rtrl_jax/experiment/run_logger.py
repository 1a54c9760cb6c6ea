"""Run logs: TensorBoard events, plus the same scalars as JSONL and CSV.

Files in the run folder:

  config.json         the resolved config
  metrics.jsonl       one object per `write`: {"step": s, "<name>": value, ...}
                      (strict JSON: NaN/inf as null; `read_jsonl` gives NaN)
  metrics.csv         the same scalars in long form: step,name,value
  tensorboard/        tensorboardX event files

After a resume from step s, rows past s (logged by the killed run after its
last checkpoint) are dropped from the JSONL/CSV and TensorBoard purges them,
so every step is logged once.
"""

import csv
import json
import math
import os

import tensorboardX
from absl import logging


def json_safe(value):
  """`value` (nested dicts/lists of scalars) with NaN and ±inf as None, so
  that json.dumps writes strict JSON (null) that every JSON reader accepts."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def read_jsonl(path):
  """The rows of a metrics.jsonl as a list of dicts; a null (a non-finite
  value, see `json_safe`) reads as NaN."""
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [{k: float("nan") if v is None else v for k, v in row.items()}
          for row in rows]


def _drop_rows_after(path, step, step_of):
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = [line for line in lines if step_of(line) is None
          or step_of(line) <= step]
  with open(path, "w") as f:
    f.writelines(kept)


def _jsonl_step(line):
  return json.loads(line)["step"] if line.strip() else None


def _csv_step(line):
  head = line.split(",", 1)[0]
  return int(head) if head.isdigit() else None


class RunLogger:
  """Writes scalars to TensorBoard, JSONL and CSV (and wandb if asked)."""

  def __init__(self, workdir, config, resume_step=None, use_wandb=False):
    """Opens the logs of `workdir`.

    Args:
      workdir: the run folder (created if needed).
      config: the resolved ConfigDict, saved as config.json.
      resume_step: None for a new run; else the restored step, after which
        earlier logged rows are dropped.
      use_wandb: also log to wandb, if it is installed (else a warning).
    """
    os.makedirs(workdir, exist_ok=True)
    self.workdir = workdir
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    self._jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._csv_path = os.path.join(workdir, "metrics.csv")
    if resume_step is not None:
      _drop_rows_after(self._jsonl_path, resume_step, _jsonl_step)
      _drop_rows_after(self._csv_path, resume_step, _csv_step)
    else:
      for path in (self._jsonl_path, self._csv_path):
        if os.path.exists(path):
          os.remove(path)
    new_csv = not os.path.exists(self._csv_path)
    self._jsonl = open(self._jsonl_path, "a")
    self._csv_file = open(self._csv_path, "a", newline="")
    self._csv = csv.writer(self._csv_file)
    if new_csv:
      self._csv.writerow(["step", "name", "value"])
    self._tensorboard = tensorboardX.SummaryWriter(
        os.path.join(workdir, "tensorboard"),
        purge_step=None if resume_step is None else resume_step + 1)
    self._wandb = None
    if use_wandb:
      try:
        import wandb  # pylint: disable=g-import-not-at-top
      except ImportError:
        logging.warning("run.wandb is set but wandb is not installed; skipped")
      else:
        self._wandb = wandb.init(dir=workdir, config=config.to_dict(),
                                 resume="allow",
                                 name=os.path.basename(workdir.rstrip("/")))

  def write(self, step, scalars):
    """Logs {name: float} at `step` everywhere."""
    scalars = {name: float(value) for name, value in scalars.items()}
    self._jsonl.write(json.dumps(json_safe({"step": int(step), **scalars}),
                                 allow_nan=False) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._csv.writerow([int(step), name, repr(value)])
      if math.isfinite(value):    # e.g. no episode ended: nothing to plot
        self._tensorboard.add_scalar(name, value, int(step))
    self._csv_file.flush()
    self._tensorboard.flush()
    if self._wandb is not None:
      self._wandb.log(scalars, step=int(step))

  def close(self):
    self._jsonl.close()
    self._csv_file.close()
    self._tensorboard.close()
    if self._wandb is not None:
      self._wandb.finish()
