"""The training loop shared by experiment scripts.

    (resumed at s = the last step, or at an evaluation step: evaluate(state)
     again, logged only where the killed run had not logged it; at the last
     step this redoes a final evaluation a kill lost, and a run whose
     should_stop fired there stays stopped)
    for s in start_step+1 .. options.num_steps:
      state, metrics = train_step(state)        # jitted, pure; metrics at s
      every log_every: log train/* and steps/s   (checks the losses first)
      every eval_every: log evaluate(state)      (may stop the run)
      every checkpoint_every: save state         (checks the losses first)
      SIGTERM or SIGINT received (by any process): save state and return
        "preempted" (unless should_stop fired in this step: "stopped" wins)

Losses (and gradient norms) are fetched from the device only at
log/checkpoint boundaries. The first one that is non-finite, or more than
`divergence_factor` times its reference (the median of |value| over the
first `DIVERGENCE_WINDOW` logged values of the run, read back from
metrics.jsonl on a resume) or above a script's absolute `divergence_limits`,
raises `NonFiniteLossError` (`DivergenceError`)
naming the step, and the state is not saved, so the last checkpoint is from
before it.

Signals: see `rtrl_jax.experiment.preemption` (installed by every script):
a signal before this session's first step is done (e.g. while it compiles;
single process only) exits at once; later ones save after the step in
progress; one during the last step saves, then exits as preempted (a resume
redoes the final evaluation); a second Ctrl-C aborts.
"""

import contextlib
import dataclasses
import math
import signal
import time
from typing import Optional, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm
from absl import logging


from rtrl_jax.experiment import preemption

# Divergence guard: a checked metric above DIVERGENCE_FACTOR × the median
# |value| of its first DIVERGENCE_WINDOW logged values stops the run. Large,
# because RL losses legitimately grow by orders of magnitude as returns do
# (a CartPole value loss from ~1e2 to ~1e5); a blown-up run goes far past.
DIVERGENCE_FACTOR = 1e6
DIVERGENCE_WINDOW = 5


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the message names the step."""


class DivergenceError(NonFiniteLossError):
  """A loss or gradient norm exploded (beyond `divergence_factor` times its
  reference); the message names the step, the value and the reference."""


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
def _signal_flag():
  """Yields a dict whose "set" becomes the signal's name on SIGTERM or SIGINT
  while inside. With `preemption` installed (the scripts), that module
  decides; else (run() called from Python) this installs plain handlers."""
  flag = {"set": None}
  if preemption.installed():
    preemption.reassert()
    preemption.clear()    # (a request answered by an earlier loop)
    try:
      yield flag
    finally:
      preemption.set_deferring(False)
    return

  def handler(signum, frame):
    del frame
    flag["set"] = signal.Signals(signum).name

  previous = {s: signal.signal(s, handler)
              for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield flag
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def _signal_received(flag):
  if preemption.installed():
    flag["set"] = flag["set"] or preemption.requested()
  return flag["set"]


def _in_any_process(flag):
  """Whether `flag` is set in any process. Processes must stop at the same
  step: saving a checkpoint and the next step are collectives, so a process
  that saved while another stepped on would wait for it forever (SLURM sends
  SIGTERM to each task separately)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


class _Guard:
  """The non-finite and divergence checks of the pending metrics."""

  def __init__(self, keys, factor, history, limits=None):
    self.limits = dict(limits or {})
    self.keys = tuple(keys) + tuple(k for k in self.limits if k not in keys)
    keys = self.keys
    self.factor = factor
    # {key: [|value| of the first DIVERGENCE_WINDOW logged values]}
    self.early = {k: [abs(v) for v in history.get(k, [])
                      if math.isfinite(v)][:DIVERGENCE_WINDOW] for k in keys}

  def note_logged(self, scalars):
    for key in self.keys:
      value = scalars.get(f"train/{key}")
      if (value is not None and len(self.early[key]) < DIVERGENCE_WINDOW
          and math.isfinite(value)):
        self.early[key].append(abs(float(value)))

  def reference(self, key):
    if not self.factor or len(self.early[key]) < DIVERGENCE_WINDOW:
      return None
    return float(np.median(self.early[key]))

  def check(self, pending, checkpointer):
    """Raises at the first bad value in `pending` [(step, {key: value})]."""
    if not pending:
      return
    steps = [step for step, _ in pending]
    values = jax.device_get([metrics for _, metrics in pending])
    pending.clear()
    error = self._first_error(steps, values)
    # Processes stop together (process 0 alone has the logged reference).
    if _in_any_process(error is not None) and error is None:
      error = DivergenceError("another process found a diverged or "
                              "non-finite metric")
    if error is not None:
      last = checkpointer.latest_step() if checkpointer else None
      kept = (f"last good checkpoint: step {last} in "
              f"{checkpointer.directory}" if last is not None
              else "no checkpoint was saved")
      raise type(error)(f"{error}; stopped without saving; {kept}")

  def _first_error(self, steps, values):
    for step, metrics in zip(steps, values):
      for key in self.keys:
        if key not in metrics:
          continue
        value = float(np.asarray(metrics[key]))
        reference = self.reference(key)
        if not math.isfinite(value):
          error = NonFiniteLossError(f"non-finite {key} ({value}) at step "
                                     f"{step}")
        elif key in self.limits and abs(value) > self.limits[key]:
          error = DivergenceError(
              f"{key} diverged at step {step}: {value:.4g} is above its "
              f"limit {self.limits[key]:g}")
        elif reference and abs(value) > self.factor * reference:
          error = DivergenceError(
              f"{key} diverged at step {step}: {value:.4g} is more than "
              f"{self.factor:g}x its reference {reference:.4g} (median |value| "
              f"of the first {DIVERGENCE_WINDOW} logged)")
        else:
          continue
        return error
    return None


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """What a `train_loop` does besides stepping.

  Attributes:
    num_steps: the last step.
    log_every, eval_every, checkpoint_every: intervals in steps.
    loss_key: the metric checked for non-finite values and divergence.
    divergence_keys: train metrics checked (default: `loss_key` and
      "grad_norm", where the step returns them).
    divergence_factor: the factor over the reference that counts as
      diverged (default DIVERGENCE_FACTOR); None or 0: only non-finite
      values (and `divergence_limits`) stop the run.
    divergence_limits: {train metric: bound on |value|}, checked from the
      first step (an explosion within the reference's first logged values
      has no reference to exceed), e.g. a cross-entropy far above chance's.
    progress: show a tqdm bar (steps/s, loss, progress_metric).
    progress_metric: an evaluation scalar shown in the progress bar.
    progress_train_metrics: train metric names also shown in the bar.
    progress_unit, progress_unit_scale: the bar counts steps × scale of this
      unit (e.g. "frame" and environment frames per step), so its rate is
      in these units per second.
  """
  num_steps: int
  log_every: int = 1
  eval_every: int = 1
  checkpoint_every: int = 1
  loss_key: str = "loss"
  divergence_keys: Optional[Sequence[str]] = None
  divergence_factor: Optional[float] = DIVERGENCE_FACTOR
  divergence_limits: Optional[dict] = None
  progress: bool = True
  progress_metric: Optional[str] = None
  progress_train_metrics: Sequence[str] = ()
  progress_unit: str = "step"
  progress_unit_scale: float = 1


def train_loop(state, train_step, options, *, start_step, logger,
               checkpointer, evaluate=None, should_stop=None,
               checkpoint_metadata=None):
  """Runs `train_step` from `start_step` to `options.num_steps`; see the
  module doc.

  Args:
    state: the training state after `start_step` steps.
    train_step: state -> (state, {name: scalar array}), jitted.
    options: `LoopOptions`.
    start_step: steps already done (0, or the restored checkpoint's step).
    logger: a `RunLogger` (train scalars are logged as "train/<name>").
    checkpointer: a `Checkpointer`.
    evaluate: state -> {name: float}, logged as given (e.g. "valid/accuracy");
      also run at step 0 of a new run, and again at a resumed last or
      evaluation step (see the module doc).
    should_stop: {name: float} -> bool on each evaluation's scalars.
    checkpoint_metadata: (step, state) -> JSON-able dict saved with each
      checkpoint.

  Returns:
    (state, LoopResult).

  Raises:
    NonFiniteLossError (DivergenceError): see the module doc.
  """
  session = _Session(state, options, start_step, logger, checkpointer,
                     evaluate, should_stop, checkpoint_metadata)
  with _signal_flag() as flag, tqdm.tqdm(
      total=options.num_steps, initial=start_step, unit=options.progress_unit,
      unit_scale=options.progress_unit_scale, dynamic_ncols=True,
      disable=not options.progress, mininterval=1.0) as bar:
    session.bar = bar
    status, received = session.run(train_step, flag)
  step = session.step
  if status == "preempted":
    logging.warning("%s: saved the checkpoint of step %d in %s",
                    received or "a signal to another process", step,
                    checkpointer.directory)
  elif received and preemption.installed():
    # A signal in the last step: the checkpoint is saved; exit now as
    # preempted rather than run the script's final evaluation, which a
    # --resume redoes.
    preemption.exit_preempted(received, f"saved the checkpoint of step {step}"
                              f" in {checkpointer.directory}; --resume "
                              "finishes the run")
  return session.state, LoopResult(status=status, step=step,
                                   eval_metrics=session.eval_metrics)


class _Session:
  """One `train_loop` call's state: the training state, the guard, the
  pending losses, the last metrics and evaluation, the progress bar."""

  def __init__(self, state, options, start_step, logger, checkpointer,
               evaluate, should_stop, checkpoint_metadata):
    self.state, self.options, self.step = state, options, start_step
    self.start_step = start_step
    self.logger, self.checkpointer = logger, checkpointer
    self.evaluate, self.should_stop = evaluate, should_stop
    self.metadata = checkpoint_metadata or (
        lambda step, state: {"step": step})
    keys = (tuple(options.divergence_keys)
            if options.divergence_keys is not None
            else (options.loss_key, "grad_norm"))
    history = {k: _logged_values(logger, f"train/{k}", DIVERGENCE_WINDOW)
               for k in keys} if start_step > 0 else {}
    self.guard = _Guard(keys, options.divergence_factor, history,
                        options.divergence_limits)
    self.pending, self.eval_metrics, self.last_metrics = [], {}, None
    self.bar = None
    self.tick, self.tick_step = time.perf_counter(), start_step

  def run(self, train_step, flag):
    """The loop of the module doc: (status, the signal received or None)."""
    opts, status = self.options, "finished"
    if self.evaluate is not None and opts.num_steps > 0 and _evaluate_at_start(
        self.logger, self.start_step, opts.num_steps, opts.eval_every):
      if self.run_evaluation(self.start_step):
        status = "stopped"
    self.tick = time.perf_counter()
    # A signal before this session's first step ends (e.g. while it
    # compiles) has nothing new to save: the process exits at once. After
    # it, the loop saves after the step in progress. Several processes must
    # stop at one step together, so they always defer.
    preemption.set_deferring(jax.process_count() > 1)
    while status == "finished" and self.step < opts.num_steps:
      self.state, self.last_metrics = train_step(self.state)
      self.step += 1
      step = self.step
      preemption.set_deferring(True)
      self.pending.append((step, {k: self.last_metrics[k]
                                  for k in self.guard.keys
                                  if k in self.last_metrics}))
      self.bar.update(1)
      if step % opts.log_every == 0 or step == opts.num_steps:
        self.log_train(step)
      if self.evaluate is not None and (step % opts.eval_every == 0 or
                                        step == opts.num_steps):
        if self.run_evaluation(step):
          status = "stopped"
      # Every process takes part in this collective each step; only a run
      # that would go on becomes "preempted": one that stopped at its target
      # is done, and a resume must not train past it.
      if (_in_any_process(bool(_signal_received(flag)))
          and status == "finished" and step < opts.num_steps):
        status = "preempted"
      if step % opts.checkpoint_every == 0 or status != "finished":
        self.save(step)
    self.save(self.step)
    received = _signal_received(flag)
    if status != "preempted" and _in_any_process(bool(received)):
      received = received or "SIGTERM"     # (another process got it)
    return status, received

  def save(self, step):
    self.guard.check(self.pending, self.checkpointer)
    self.checkpointer.save(step, self.state, self.metadata(step, self.state))

  def log_train(self, step):
    self.guard.check(self.pending, self.checkpointer)
    now = time.perf_counter()
    scalars = {f"train/{k}": v
               for k, v in jax.device_get(self.last_metrics).items()}
    scalars["train/steps_per_second"] = (step - self.tick_step) / max(
        now - self.tick, 1e-9)
    self.tick, self.tick_step = now, step
    self.logger.write(step, scalars)
    self.guard.note_logged({k: float(np.asarray(v))
                            for k, v in scalars.items()})
    self.bar.set_postfix_str(self.postfix(), refresh=False)

  def run_evaluation(self, step):
    """Evaluates and logs; whether should_stop fired."""
    self.eval_metrics = {k: float(v)
                         for k, v in self.evaluate(self.state).items()}
    self.logger.write(step, self.eval_metrics)
    if self.options.progress_metric in self.eval_metrics:
      self.bar.set_postfix_str(self.postfix(), refresh=False)
    return (self.should_stop is not None
            and self.should_stop(self.eval_metrics))

  def postfix(self):
    opts, parts = self.options, []
    if opts.progress_metric in self.eval_metrics:
      parts.append(f"{opts.progress_metric}="
                   f"{self.eval_metrics[opts.progress_metric]:.4f}")
    if self.last_metrics is not None:
      parts.append(f"loss={float(self.last_metrics[opts.loss_key]):.4f}")
      parts += [f"{name}={float(self.last_metrics[name]):.4g}"
                for name in opts.progress_train_metrics]
    return " ".join(parts)


def _logged_values(logger, name, limit):
  values = getattr(logger, "values", None)
  return values(name, limit) if values is not None else []


def _evaluate_at_start(logger, start_step, num_steps, eval_every):
  """Whether to evaluate before the first step: a new run; a resume at the
  last step (its final evaluation may be lost) or at a step the killed run
  evaluated (its should_stop must hold again)."""
  if start_step == 0 or start_step == num_steps:
    return True
  logged = getattr(logger, "logged_names", None)
  if logged is not None:
    evaluated = any(not name.startswith("train/")
                    for name in logged(start_step))
  else:
    evaluated = start_step % eval_every == 0
  if jax.process_count() > 1:     # process 0 has the logs
    evaluated = bool(multihost_utils.broadcast_one_to_all(
        np.int32(evaluated)))
  return evaluated
