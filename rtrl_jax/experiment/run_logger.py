"""Run logs: TensorBoard events, plus the same scalars as JSONL and CSV.

Files in the run folder:

  config.json         the resolved config
  metrics.jsonl       one object per `write`: {"step": s, "<name>": value, ...}
                      (strict JSON: NaN/inf as null; `read_jsonl` gives NaN)
  metrics.csv         the same scalars in long form: step,name,value
  tensorboard/        tensorboardX event files

After a resume from step s, rows past s (logged by the killed run after its
last checkpoint) are dropped from the JSONL/CSV, and a scalar the killed run
already logged at step s itself (an evaluation a resume repeats, a script's
final test scalars) is not written again, so every step is logged once.
Lines a kill left torn (a last line without its newline, or any line that
does not parse) are dropped too, with a warning. TensorBoard's event files
are written in the calling thread and flushed with each row (tensorboardX's
SummaryWriter writes from a worker thread, so a kill lost the points it had
not dequeued yet), rebuilt from metrics.jsonl on every resume and removed
when a run starts over, so TensorBoard shows exactly the JSONL's rows.

Files a resume reads (the metrics files when rows are dropped, results.json,
a study's final_eval.json) are written with `write_json`/`write_text`: to a
temporary file in the same folder, then os.replace()d, so a kill mid-write
leaves the old file whole instead of a truncated one.
"""

import contextlib
import csv
import json
import math
import os
import shutil
import time

from absl import logging
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2
from tensorboardX.proto import summary_pb2


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


@contextlib.contextmanager
def atomic_open(path, newline=None):
  """Yields a text file to write `path`'s new content into. It is a temporary
  file in the same folder, os.replace()d onto `path` when the block ends; if
  the block raises, it is removed and `path` is left as it was."""
  temporary = f"{path}.tmp.{os.getpid()}"
  try:
    with open(temporary, "w", newline=newline) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(temporary)
    raise


def write_text(path, text):
  """Atomically replaces `path` by `text` (a str or an iterable of lines)."""
  with atomic_open(path) as f:
    f.writelines([text] if isinstance(text, str) else text)


def write_json(path, value, **dump_kwargs):
  """Atomically replaces `path` by json.dump(value, **dump_kwargs)."""
  with atomic_open(path) as f:
    json.dump(value, f, **dump_kwargs)


def _drop_rows_after(path, step, step_of):
  """Drops the rows of `path` past `step`, and torn lines: a last line without
  its newline (killed mid-write; the next row would be appended to it) and
  any line `step_of` cannot parse (wherever it is; it cannot be read back)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept, torn = [], 0
  for line in lines:
    try:
      if not line.endswith("\n"):
        raise ValueError("no newline")
      line_step = step_of(line)
    except (ValueError, KeyError, TypeError):
      torn += 1
      continue
    if line_step is None or line_step <= step:
      kept.append(line)
  if torn:
    logging.warning("%s: dropped %d torn line(s) (a kill mid-write?)", path,
                    torn)
  if len(kept) != len(lines):
    write_text(path, kept)


def _jsonl_step(line):
  return int(json.loads(line)["step"]) if line.strip() else None


def _csv_step(line):
  if not line.strip():
    return None
  fields = next(csv.reader([line]))
  if fields == ["step", "name", "value"]:
    return None
  if len(fields) != 3:
    raise ValueError(f"{len(fields)} fields")
  float(fields[2])
  return int(fields[0])


class _TensorBoardScalars:
  """Scalar events written and flushed in the calling thread."""

  def __init__(self, logdir):
    os.makedirs(logdir, exist_ok=True)
    self._writer = EventsWriter(os.path.join(logdir, "events"))

  def add_scalar(self, tag, value, step):
    self._writer.write_event(event_pb2.Event(
        wall_time=time.time(), step=int(step),
        summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=tag, simple_value=float(value))])))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


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
    write_text(os.path.join(workdir, "config.json"),
               config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    self._jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._csv_path = os.path.join(workdir, "metrics.csv")
    self._resume_step = resume_step
    if resume_step is not None:
      _drop_rows_after(self._jsonl_path, resume_step, _jsonl_step)
      _drop_rows_after(self._csv_path, resume_step, _csv_step)
    else:
      for path in (self._jsonl_path, self._csv_path):
        if os.path.exists(path):
          os.remove(path)
    rows = read_jsonl(self._jsonl_path) if os.path.exists(
        self._jsonl_path) else []
    # Names logged at the resumed step (not to be written twice).
    self._at_resume = {name for row in rows if row["step"] == resume_step
                       for name in row if name != "step"}
    self._last_step, self._last_names = None, set()
    new_csv = not os.path.exists(self._csv_path)
    self._jsonl = open(self._jsonl_path, "a")
    self._csv_file = open(self._csv_path, "a", newline="")
    self._csv = csv.writer(self._csv_file)
    if new_csv:
      self._csv.writerow(["step", "name", "value"])
    tensorboard_dir = os.path.join(workdir, "tensorboard")
    if os.path.isdir(tensorboard_dir):
      shutil.rmtree(tensorboard_dir)
    self._tensorboard = _TensorBoardScalars(tensorboard_dir)
    self._first_values = {}
    for row in rows:
      self._remember(row)
      for name, value in row.items():
        if name != "step" and math.isfinite(value):
          self._tensorboard.add_scalar(name, value, int(row["step"]))
    self._tensorboard.flush()
    self._wandb = None
    if use_wandb:
      try:
        import wandb  # pylint: disable=g-import-not-at-top
      except ImportError:
        logging.warning("run.wandb is set but wandb is not installed "
                        "(pip install -e \".[wandb]\"); skipped")
      else:
        self._wandb = wandb.init(dir=workdir, config=config.to_dict(),
                                 resume="allow",
                                 name=os.path.basename(workdir.rstrip("/")))

  _REMEMBERED = 16     # values per name that `values` can return

  def _remember(self, row):
    for name, value in row.items():
      if name != "step":
        first = self._first_values.setdefault(name, [])
        if len(first) < self._REMEMBERED:
          first.append(value)
    if row["step"] != self._last_step:
      self._last_step, self._last_names = row["step"], set()
    self._last_names |= set(row) - {"step"}

  def values(self, name, limit):
    """The first `limit` (at most 16) values of `name` logged so far in the
    JSONL (kept from before a resume, then written by this logger)."""
    assert limit <= self._REMEMBERED
    return self._first_values.get(name, [])[:limit]

  def logged_names(self, step):
    """Names logged at `step`: the resumed step or the last one written."""
    if step == self._resume_step:
      return set(self._at_resume)
    return set(self._last_names) if step == self._last_step else set()

  def write(self, step, scalars):
    """Logs {name: float} at `step` everywhere (at a resumed step, only the
    names the killed run had not logged there)."""
    scalars = {name: float(value) for name, value in scalars.items()}
    if self._resume_step is not None and int(step) == self._resume_step:
      scalars = {name: value for name, value in scalars.items()
                 if name not in self._at_resume}
      self._at_resume |= set(scalars)
      if not scalars:
        return
    self._remember({"step": int(step), **scalars})
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
