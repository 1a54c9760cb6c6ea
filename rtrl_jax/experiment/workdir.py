"""Run folders: a new run, or `--resume` of the run already in the folder.

  <workdir>/config.json   the resolved config (written by RunLogger)
  <workdir>/checkpoints/  orbax checkpoints (Checkpointer)
  <workdir>/results.json  what the script returns when the run ends

A new run refuses a folder that already has checkpoints; a resumed run
refuses a config that differs from the saved one (naming the first differing
key), or checkpoints without a saved config.json, so a resume always
continues the same experiment. Neither starts from scratch over a run's
results.json (nor a new run over a non-empty metrics.jsonl) when there are no
checkpoints to continue from: that would overwrite them. A key added to a
script's config after runs were made (`added_keys`) is compared, for those
runs, with the value that behaves as they did.
"""

import errno
import fcntl
import json
import os
import shutil
import sys

import jax
from jax.experimental import multihost_utils

from rtrl_jax.experiment import preemption
from rtrl_jax.experiment.checkpoint import Checkpointer
from rtrl_jax.experiment.config import ConfigError, flatten


def prepare_workdir(workdir, config, resume, max_to_keep=2, added_keys=None,
                    resume_may_change=(), resume_may_extend=()):
  """(Checkpointer, step to resume from or None) for `workdir`.

  With `resume` and no checkpoint yet, the run starts from scratch (so one
  command can both start and restart a preemptible job).

  `added_keys` maps flat config keys ("sebulba.env_groups") that the script's
  config gained after runs were made to the value that reproduces those runs:
  a saved config without the key resumes when the current value is that one.

  `resume_may_change` lists flat keys a `--resume` may set to another value
  (what does not change what is trained: progress bar, logging, evaluation
  and checkpoint cadence); `resume_may_extend` keys that may grow (e.g. the
  number of steps, to train on past the planned end; the script states what
  that does to a learning-rate schedule). The new values are saved in
  config.json by the RunLogger.

  The folder is locked (an flock on it, by process 0) until the
  Checkpointer is closed: a second run on it is refused. A damaged newest
  checkpoint is set aside for the intact one before it (one-line warning).

  Raises:
    ConfigError: the folder is locked by another run; a new run in a folder
      with checkpoints; a resume with a
      config that differs from `<workdir>/config.json`, or with checkpoints
      but no config.json; no checkpoints but results a run started from
      scratch would overwrite (results.json; for a new run, a non-empty
      metrics.jsonl).
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir: {workdir} is a file, not a folder")
  try:
    os.makedirs(workdir, exist_ok=True)
    if not os.access(workdir, os.W_OK):
      raise PermissionError(f"{workdir} is not writable")
  except OSError as error:
    raise ConfigError(f"--workdir: cannot use {workdir}: "
                      f"{error.strerror or error}") from error
  preemption.reassert()     # after jax.distributed.initialize, if any
  lock = _lock(workdir)
  try:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
      # Checked before the Checkpointer creates the folder: a refused workdir
      # is left as it was.
      _refuse_results_without_checkpoints(workdir, resume)
    checkpointer = Checkpointer(directory, max_to_keep=max_to_keep)
  except BaseException:
    if lock is not None:
      lock.close()
    raise
  checkpointer.lock = lock
  try:
    latest = checkpointer.latest_step()
    _check_existing_run(workdir, config, resume, latest, added_keys,
                        resume_may_change, resume_may_extend)
    if latest is not None:
      checkpointer = _set_aside_damaged(checkpointer, max_to_keep)
      latest = checkpointer.latest_step()
  except ConfigError:
    checkpointer.close()
    raise
  return checkpointer, latest


def _lock(workdir):
  """An open descriptor holding an exclusive flock on the `workdir` folder
  itself (no file is created), by process 0 only (a multi-process run shares
  its workdir), or None. Raises ConfigError if another process holds it. On
  a file system without flock on folders the run goes on unlocked."""
  if jax.process_index() != 0:
    return None
  descriptor = os.open(workdir, os.O_RDONLY)
  try:
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as error:
    os.close(descriptor)
    if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
      raise ConfigError(
          f"--workdir: {workdir} is in use by another process (a run on it "
          f"holds its lock); wait for that run to end or choose another "
          f"--workdir") from error
    return None
  return _Lock(descriptor)


class _Lock:
  def __init__(self, descriptor):
    self._descriptor = descriptor

  def close(self):
    if self._descriptor is not None:
      os.close(self._descriptor)        # releases the flock
      self._descriptor = None

  def __del__(self):
    self.close()


def _set_aside_damaged(checkpointer, max_to_keep):
  """The checkpointer, after moving a damaged newest checkpoint (see
  Checkpointer.verify) to `<checkpoints>.corrupt/` when an earlier one is
  intact, with a one-line warning on stderr. A damaged checkpoint with no
  intact one before it is left where it is (restore then names it)."""
  steps = sorted(checkpointer.all_steps(), reverse=True)
  damaged = []
  for step in steps:
    damage = checkpointer.verify(step)
    if damage is None:
      break
    damaged.append((step, damage))
  else:
    return checkpointer       # none is intact: nothing to fall back to
  if not damaged:
    return checkpointer
  directory, lock = checkpointer.directory, checkpointer.lock
  checkpointer.lock = None
  checkpointer.close()
  if jax.process_index() == 0:
    corrupt = directory + ".corrupt"
    os.makedirs(corrupt, exist_ok=True)
    for step, damage in damaged:
      target = os.path.join(corrupt, str(step))
      if os.path.exists(target):
        shutil.rmtree(target)
      shutil.move(os.path.join(directory, str(step)), target)
      print(f"warning: checkpoint {step} in {directory} is damaged "
            f"({damage}); moved it to {target} and resume from step "
            f"{steps[len(damaged)]}", file=sys.stderr, flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("rtrl_jax set aside damaged")
  checkpointer = Checkpointer(directory, max_to_keep=max_to_keep)
  checkpointer.lock = lock
  return checkpointer


def _check_existing_run(workdir, config, resume, latest, added_keys,
                        may_change=(), may_extend=()):
  """prepare_workdir's checks of what `workdir` holds (its latest
  checkpoint `latest`, or None); raises ConfigError."""
  if latest is None:
    _refuse_results_without_checkpoints(workdir, resume)
    return
  if not resume:
    raise ConfigError(
        f"--workdir: {workdir} already has checkpoints (latest step "
        f"{latest}); pass --resume to continue it or choose another --workdir")
  saved_path = os.path.join(workdir, "config.json")
  if not os.path.exists(saved_path):
    raise ConfigError(
        f"--workdir: {workdir} has checkpoints (latest step {latest}) but no "
        f"config.json to check --resume's config against; restore it or "
        f"choose another --workdir")
  try:
    with open(saved_path) as f:
      saved = flatten(json.load(f))
  except (OSError, ValueError, AttributeError) as error:
    raise ConfigError(
        f"--workdir: cannot read {saved_path} to check --resume's config "
        f"against: {str(error).splitlines()[0] if str(error) else error!r}"
    ) from error
  current = flatten(json.loads(config.to_json_best_effort()))
  added_keys = dict(added_keys or {})
  for key in sorted(set(saved) | set(current)):
    if key not in saved and key in added_keys:
      if current.get(key) != added_keys[key]:
        raise ConfigError(
            f"config.{key}: is {current.get(key)!r} but the run in "
            f"{workdir} was started before this key existed, which "
            f"behaves as {added_keys[key]!r}; pass "
            f"--config.{key}={added_keys[key]!r} to resume it")
    elif saved.get(key) != current.get(key):
      if key in may_change and key in saved and key in current:
        continue
      if key in may_extend and key in saved and key in current:
        try:
          if current[key] >= saved[key]:
            continue
        except TypeError:
          pass
        raise ConfigError(
            f"config.{key}: is {current.get(key)!r} but the run in {workdir} "
            f"was started with {saved.get(key)!r}; --resume may only "
            f"increase it")
      allowed = ""
      if may_change or may_extend:
        allowed = (" (it may change only "
                   + ", ".join(list(may_change) + [f"{k} (up)" for k in
                                                   may_extend]) + ")")
      raise ConfigError(
          f"config.{key}: is {current.get(key)!r} but the run in {workdir} "
          f"was started with {saved.get(key)!r}; --resume needs the same "
          f"config{allowed}")


def _refuse_results_without_checkpoints(workdir, resume):
  """Raises ConfigError if `workdir` (which has no checkpoint) holds a run's
  results that a run started from scratch there would overwrite:
  results.json, or (for a new run) a non-empty metrics.jsonl.

  A `--resume` with no checkpoint may still start over from a metrics.jsonl
  alone: that run stopped before its first checkpoint (a preempted job, or a
  study's run that crashed early), and its rows are what starting again
  reproduces.
  """
  metrics = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(os.path.join(workdir, "results.json")):
    found = "results.json"
  elif not resume and os.path.exists(metrics) and os.path.getsize(metrics):
    found = "metrics.jsonl"
  else:
    return
  raise ConfigError(
      f"--workdir: {workdir} already has {found} but no checkpoints, so it "
      f"cannot be resumed and a new run would overwrite it; pick a new "
      f"--workdir (or delete this one)")


def finished_results(workdir, resume_step, num_steps):
  """The saved results.json of a run that already ended, else None: it did
  all `num_steps`, or it stopped early (its results say "stopped", e.g. at a
  target accuracy, and its last checkpoint is that step). A `--resume` of
  such a run returns them instead of training on past its end or starting a
  session with nothing to do, and overwriting them."""
  path = os.path.join(workdir, "results.json")
  if resume_step is None or not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  if resume_step == num_steps or saved.get("status") == "stopped":
    return saved
  return None
