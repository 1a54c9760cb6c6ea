"""Orbax checkpoints of a whole training state (any pytree) plus JSON metadata.

Each checkpoint is a folder `<directory>/<step>` written atomically by orbax
(a temporary folder renamed when complete), so a run killed mid-save leaves
the previous checkpoints intact; only the last `max_to_keep` are kept.
"""

import os

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
    abstract = _without_empty(template, ocp.utils.to_shape_dtype_struct)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          metadata=ocp.args.JsonRestore()))
    except ValueError as error:
      # Orbax's message lists whole trees; its first line says what differs.
      reason = str(error).strip().splitlines()[0]
      raise ConfigError(
          f"checkpoint {step} in {self.directory} does not fit the template "
          f"(saved from another config or model?): {reason}") from error
    stored = iter(jax.tree.leaves(restored.state))
    template_leaves, treedef = jax.tree.flatten(template)
    # Zero-size leaves were not stored; the template's are the same value.
    leaves = [next(stored) if np.size(x) else x for x in template_leaves]
    return jax.tree.unflatten(treedef, leaves), restored.metadata

  def close(self):
    self._manager.close()
