"""Orbax checkpoints of a whole training state (any pytree) plus JSON metadata.

Each checkpoint is a folder `<directory>/<step>` written atomically by orbax
(a temporary folder renamed when complete), so a run killed mid-save leaves
the previous checkpoints intact; only the last `max_to_keep` are kept.

Orbax does not notice a data file damaged later (a bit flip restores wrong
numbers silently, a truncation fails with a long error), so each save also
writes `<directory>/checksums/<step>.json`: the size and CRC-32 of every file
of the checkpoint. `verify(step)` compares them; `prepare_workdir` resumes
from the newest checkpoint that verifies, moving a damaged one to
`<directory>.corrupt/<step>` with a one-line warning. A checkpoint without a
checksum file (saved before this existed, or a kill right after orbax's
commit) counts as intact.
"""

import json
import os
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from rtrl_jax.experiment.config import ConfigError


def _without_empty(tree, leaf_fn=lambda x: x):
  """`tree` with zero-size arrays as None (orbax cannot save them)."""
  return jax.tree.map(lambda x: leaf_fn(x) if np.size(x) else None, tree)


class Checkpointer:
  """Saves and restores `state` pytrees keyed by step."""

  def __init__(self, directory, max_to_keep=2):
    self.directory = os.path.abspath(directory)
    self.lock = None      # prepare_workdir's lock on the run folder
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False))

  def latest_step(self):
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step, state, metadata=None):
    """Writes `state` (and a JSON-able dict) as checkpoint `step`."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_without_empty(state)),
        metadata=ocp.args.JsonSave(metadata or {})))
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      self._write_checksums(step)

  @property
  def checksum_directory(self):
    return os.path.join(self.directory, "checksums")

  def _checksum_path(self, step):
    return os.path.join(self.checksum_directory, f"{step}.json")

  def _write_checksums(self, step):
    from rtrl_jax.experiment.run_logger import write_json  # pylint: disable=g-import-not-at-top
    os.makedirs(self.checksum_directory, exist_ok=True)
    write_json(self._checksum_path(step),
               _file_checksums(os.path.join(self.directory, str(step))))
    kept = {str(s) for s in self._manager.all_steps()}
    for name in os.listdir(self.checksum_directory):
      if name.endswith(".json") and name[:-5] not in kept:
        try:
          os.remove(os.path.join(self.checksum_directory, name))
        except OSError:
          pass

  def verify(self, step):
    """None if checkpoint `step` matches its checksums (or has none), else
    what differs (one line)."""
    try:
      with open(self._checksum_path(step)) as f:
        expected = json.load(f)
    except (OSError, ValueError):
      return None
    actual = _file_checksums(os.path.join(self.directory, str(step)))
    for name, value in sorted(expected.items()):
      if name not in actual:
        return f"{name} is missing"
      if actual[name][0] != value[0]:
        return f"{name} has {actual[name][0]} bytes, not {value[0]}"
      if actual[name][1] != value[1]:
        return f"{name} does not match its checksum"
    return None

  def restore(self, template, step=None):
    """(state shaped like `template`, metadata) of checkpoint `step` (latest).

    `template` gives the tree structure (named tuples included), shapes and
    dtypes, e.g. the freshly initialised state.

    Raises:
      ConfigError: (one line, naming the folder) the checkpoint does not fit
        `template`, e.g. it was saved by another model; scripts report it as
        any other config error.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    if step not in self.all_steps():
      raise FileNotFoundError(
          f"no checkpoint {step} in {self.directory} (it has "
          f"{', '.join(map(str, sorted(self.all_steps())))})")
    damage = self.verify(step)
    if damage is not None:
      raise ConfigError(f"checkpoint {step} in {self.directory} is damaged: "
                        f"{damage}")
    abstract = _without_empty(template, ocp.utils.to_shape_dtype_struct)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          metadata=ocp.args.JsonRestore()))
    except ValueError as error:
      # Orbax's message lists whole trees; its first line says what differs.
      reason = str(error).strip().splitlines()[0][:300]
      damage = self.verify(step)
      if damage is not None:
        raise ConfigError(
            f"checkpoint {step} in {self.directory} is damaged: {damage}"
        ) from error
      raise ConfigError(
          f"checkpoint {step} in {self.directory} does not fit the template "
          f"(saved from another config or model?): {reason}") from error
    except Exception as error:  # pylint: disable=broad-except
      reason = (str(error).strip().splitlines() or [repr(error)])[0][:300]
      raise ConfigError(
          f"checkpoint {step} in {self.directory} cannot be read (damaged?): "
          f"{reason}; move it out of {self.directory} to resume from the "
          f"one before") from error
    stored = iter(jax.tree.leaves(restored.state))
    template_leaves, treedef = jax.tree.flatten(template)
    # Zero-size leaves were not stored; the template's are the same value.
    leaves = [next(stored) if np.size(x) else x for x in template_leaves]
    return jax.tree.unflatten(treedef, leaves), restored.metadata

  def close(self):
    self._manager.close()
    lock, self.lock = getattr(self, "lock", None), None
    if lock is not None:
      lock.close()        # releases the workdir's lock


def _file_checksums(folder):
  """{relative path: [size, crc32]} of every file under `folder`."""
  sums = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      crc = 0
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          crc = zlib.crc32(chunk, crc)
      sums[os.path.relpath(path, folder)] = [os.path.getsize(path), crc]
  return sums
