"""Robustness of the experiment framework to signals and kills mid-write:
a stopped run stays stopped under SIGTERM, resume survives a torn metrics
line, and the files a resume reads are replaced atomically."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from rtrl_jax import experiment
from rtrl_jax.experiment import run_logger


def _train_step(state):
  step = state["step"] + 1
  return {"step": step}, {"loss": 1.0 / step}


def test_sigterm_in_the_step_that_stops_keeps_status_stopped(tmp_path):
  logger = experiment.RunLogger(str(tmp_path),
                                ml_collections.ConfigDict({"seed": 0}))
  checkpointer = experiment.Checkpointer(str(tmp_path / "checkpoints"))
  calls = []

  def should_stop(metrics):
    del metrics
    calls.append(1)
    if len(calls) < 2:        # the step-0 evaluation: go on
      return False
    os.kill(os.getpid(), signal.SIGTERM)   # caught by train_loop's handler
    return True

  try:
    _, result = experiment.train_loop(
        {"step": jnp.zeros((), jnp.int32)}, jax.jit(_train_step),
        experiment.LoopOptions(num_steps=20, log_every=2, eval_every=4,
                               checkpoint_every=100, progress=False),
        start_step=0, logger=logger, checkpointer=checkpointer,
        evaluate=lambda state: {"valid/x": 1.0},
        should_stop=should_stop)
  finally:
    logger.close()
  assert result.status == "stopped"
  assert result.step == 4
  assert checkpointer.latest_step() == 4
  checkpointer.close()


def _log_steps(workdir, steps, resume_step=None):
  logger = experiment.RunLogger(workdir,
                                ml_collections.ConfigDict({"seed": 0}),
                                resume_step=resume_step)
  for step in steps:
    logger.write(step, {"train/loss": 1.0 / step})
  logger.close()


def test_resume_drops_a_torn_last_metrics_line(tmp_path):
  workdir = str(tmp_path)
  _log_steps(workdir, [1, 2, 3])
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "train/lo')         # killed mid-write
  with open(tmp_path / "metrics.csv", "a") as f:
    f.write("4,train/lo")
  _log_steps(workdir, [4, 5], resume_step=3)
  rows = experiment.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
  assert rows[3]["train/loss"] == pytest.approx(0.25)
  lines = (tmp_path / "metrics.csv").read_text().splitlines()
  assert lines == ["step,name,value"] + [
      f"{s},train/loss,{1.0 / s!r}" for s in (1, 2, 3, 4, 5)]


def test_resume_drops_an_undecodable_metrics_line_in_the_middle(tmp_path):
  workdir = str(tmp_path)
  _log_steps(workdir, [1])
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 2, "tr\n{"step": 2, "train/loss": 0.5}\n')
  _log_steps(workdir, [3], resume_step=2)
  rows = experiment.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [row["step"] for row in rows] == [1, 2, 3]


def test_write_json_replaces_the_file_or_leaves_it_intact(tmp_path):
  path = str(tmp_path / "results.json")
  run_logger.write_json(path, {"status": "finished", "step": 3}, indent=2)
  assert json.loads(open(path).read()) == {"status": "finished", "step": 3}
  with pytest.raises(TypeError):
    # json.dump streams: "status" is written before the set fails.
    run_logger.write_json(path, {"status": "stopped", "bad": {1, 2}})
  assert json.loads(open(path).read()) == {"status": "finished", "step": 3}
  assert os.listdir(tmp_path) == ["results.json"]     # no temporary left
  run_logger.write_json(path, {"status": "stopped"})
  assert json.loads(open(path).read()) == {"status": "stopped"}
  assert os.listdir(tmp_path) == ["results.json"]


def test_write_text_is_atomic_and_keeps_the_old_file_on_error(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  run_logger.write_text(path, ["a\n", "b\n"])
  assert open(path).read() == "a\nb\n"

  def lines():
    yield "c\n"
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    run_logger.write_text(path, lines())
  assert open(path).read() == "a\nb\n"
  assert os.listdir(tmp_path) == ["metrics.jsonl"]
