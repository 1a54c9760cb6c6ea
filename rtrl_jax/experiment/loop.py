"""The training loop shared by experiment scripts.

    for s in start_step+1 .. num_steps:
      state, metrics = train_step(state)        # jitted, pure; metrics at s
      every log_every: log train/* and steps/s   (checks the losses first)
      every eval_every: log evaluate(state)      (may stop the run)
      every checkpoint_every: save state         (checks the losses first)
      SIGTERM received (by any process): save state and return "preempted"
        (unless should_stop fired in this step: "stopped" wins)

Losses are fetched from the device only at log/checkpoint boundaries; the
first non-finite one raises `NonFiniteLossError` naming its step, and the
state is not saved, so the last checkpoint is the last good one.
"""

import contextlib
import dataclasses
import math
import signal
import time

import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm
from absl import logging


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the message names the step."""


@dataclasses.dataclass
class LoopResult:
  """How the loop ended.

  Attributes:
    status: "finished" (num_steps done), "stopped" (should_stop was true) or
      "preempted" (SIGTERM).
    step: the last step done (and checkpointed).
    eval_metrics: the last evaluation's scalars ({} if none).
  """
  status: str
  step: int
  eval_metrics: dict


@contextlib.contextmanager
def _sigterm_flag():
  """Yields a dict whose "set" becomes True on SIGTERM while inside."""
  flag = {"set": False}

  def handler(signum, frame):
    del signum, frame
    flag["set"] = True

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


def _in_any_process(flag):
  """Whether `flag` is set in any process. Processes must stop at the same
  step: saving a checkpoint and the next step are collectives, so a process
  that saved while another stepped on would wait for it forever (SLURM sends
  SIGTERM to each task separately)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _check_finite(pending, loss_key, checkpointer):
  """Raises NonFiniteLossError at the first non-finite loss in `pending`."""
  if not pending:
    return
  steps = [step for step, _ in pending]
  losses = np.asarray(jax.device_get([loss for _, loss in pending]))
  bad = np.flatnonzero(~np.isfinite(losses))
  pending.clear()
  if bad.size:
    last = checkpointer.latest_step() if checkpointer else None
    kept = (f"last good checkpoint: step {last} in {checkpointer.directory}"
            if last is not None else "no checkpoint was saved")
    raise NonFiniteLossError(
        f"non-finite {loss_key} ({losses[bad[0]]}) at step {steps[bad[0]]}; "
        f"stopped without saving; {kept}")


def train_loop(state, train_step, *, start_step, num_steps, logger,
               checkpointer, log_every, eval_every, checkpoint_every,
               evaluate=None, should_stop=None, loss_key="loss",
               progress_metric=None, progress=True, checkpoint_metadata=None,
               progress_train_metrics=(), progress_unit="step",
               progress_unit_scale=1):
  """Runs `train_step` from `start_step` to `num_steps`; see the module doc.

  Args:
    state: the training state after `start_step` steps.
    train_step: state -> (state, {name: scalar array}), jitted.
    start_step: steps already done (0, or the restored checkpoint's step).
    num_steps: the last step.
    logger: a `RunLogger` (train scalars are logged as "train/<name>").
    checkpointer: a `Checkpointer`.
    log_every, eval_every, checkpoint_every: intervals in steps.
    evaluate: state -> {name: float}, logged as given (e.g. "valid/accuracy");
      also run at step 0 of a new run.
    should_stop: {name: float} -> bool on each evaluation's scalars.
    loss_key: the metric checked for non-finite values.
    progress_metric: an evaluation scalar shown in the progress bar.
    progress: show a tqdm bar (steps/s, loss, progress_metric).
    progress_train_metrics: train metric names also shown in the bar.
    progress_unit, progress_unit_scale: the bar counts steps × scale of this
      unit (e.g. "frame" and environment frames per step), so its rate is
      in these units per second.
    checkpoint_metadata: (step, state) -> JSON-able dict saved with each
      checkpoint.

  Returns:
    (state, LoopResult).

  Raises:
    NonFiniteLossError: see the module doc.
  """
  metadata = checkpoint_metadata or (lambda step, state: {"step": step})
  pending = []
  eval_metrics = {}
  last_metrics = None
  status = "finished"
  step = start_step

  def save(step):
    _check_finite(pending, loss_key, checkpointer)
    checkpointer.save(step, state, metadata(step, state))

  def run_evaluation(step):
    nonlocal eval_metrics
    eval_metrics = {k: float(v) for k, v in evaluate(state).items()}
    logger.write(step, eval_metrics)
    if progress_metric in eval_metrics:
      bar.set_postfix_str(_postfix(), refresh=False)
    return should_stop is not None and should_stop(eval_metrics)

  def _last_loss():
    if last_metrics is None:
      return math.nan
    return float(last_metrics[loss_key])

  def _postfix():
    parts = []
    if progress_metric in eval_metrics:
      parts.append(f"{progress_metric}={eval_metrics[progress_metric]:.4f}")
    if last_metrics is not None:
      parts.append(f"loss={_last_loss():.4f}")
      parts += [f"{name}={float(last_metrics[name]):.4g}"
                for name in progress_train_metrics]
    return " ".join(parts)

  with _sigterm_flag() as sigterm, tqdm.tqdm(
      total=num_steps, initial=start_step, unit=progress_unit,
      unit_scale=progress_unit_scale, dynamic_ncols=True,
      disable=not progress, mininterval=1.0) as bar:
    if evaluate is not None and start_step == 0 and num_steps > 0:
      if run_evaluation(0):
        status = "stopped"
    tick, tick_step = time.perf_counter(), step
    while status == "finished" and step < num_steps:
      state, last_metrics = train_step(state)
      step += 1
      pending.append((step, last_metrics[loss_key]))
      bar.update(1)
      if step % log_every == 0 or step == num_steps:
        _check_finite(pending, loss_key, checkpointer)
        now = time.perf_counter()
        scalars = {f"train/{k}": v
                   for k, v in jax.device_get(last_metrics).items()}
        scalars["train/steps_per_second"] = (step - tick_step) / max(
            now - tick, 1e-9)
        tick, tick_step = now, step
        logger.write(step, scalars)
        bar.set_postfix_str(_postfix(), refresh=False)
      if evaluate is not None and (step % eval_every == 0 or
                                   step == num_steps):
        if run_evaluation(step):
          status = "stopped"
      # Every process takes part in this collective each step; only a run
      # that would go on becomes "preempted": one that stopped at its target
      # is done, and a resume must not train past it.
      if _in_any_process(sigterm["set"]) and status == "finished":
        status = "preempted"
      if step % checkpoint_every == 0 or status != "finished":
        save(step)
    save(step)
  if status == "preempted":
    logging.warning("SIGTERM: saved the checkpoint of step %d in %s", step,
                    checkpointer.directory)
  return state, LoopResult(status=status, step=step, eval_metrics=eval_metrics)
