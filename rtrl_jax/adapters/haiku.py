r"""A haiku module that runs any `rtrl_jax` cell in RTRL, TBPTT or BPTT mode.

    def forward(inputs, resets, state):
      return RTRLRecurrent(rtrl_jax.ELSTM(64), mode="rtrl")(inputs, resets, state)
    model = hk.transform(forward)
    params = model.init(key, inputs, resets, None)
    outputs, state = model.apply(params, None, inputs, resets, state)

Haiku parameters are flat arrays per module, so each leaf of the cell's
parameter tree becomes one haiku parameter named by its path joined with "."
("recurrent.Z", "readout.W_o", ...). `to_cell_params` and `from_cell_params`
convert between that flat dict and the nested tree of `cell.init`, so
parameters move between this module and the core API unchanged. Modes: see
`rtrl_jax.adapters`.
"""

import functools

import haiku as hk
import jax
import jax.numpy as jnp

from rtrl_jax.adapters import check_mode, default_state, run_in_mode


def _param_structure(cell, input_size, dtype):
  """(names, shape/dtype leaves, treedef) of cell.init's parameter tree."""
  shapes = jax.eval_shape(
      functools.partial(cell.init, input_size=input_size, dtype=dtype),
      jax.random.PRNGKey(0))
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  names = [".".join(str(k.key) for k in path) for path, _ in with_paths]
  return names, [leaf for _, leaf in with_paths], treedef


def from_cell_params(cell_params):
  """The flat {"recurrent.Z": ..., ...} dict of one module's haiku params."""
  with_paths, _ = jax.tree_util.tree_flatten_with_path(cell_params)
  return {".".join(str(k.key) for k in path): leaf for path, leaf in with_paths}


def to_cell_params(module_params, cell, input_size, dtype=jnp.float32):
  """The nested tree of `cell.init` from one module's flat haiku params."""
  names, _, treedef = _param_structure(cell, input_size, dtype)
  return jax.tree_util.tree_unflatten(treedef,
                                      [module_params[n] for n in names])


class RTRLRecurrent(hk.Module):
  """A recurrent layer of `cell` run over [T, B, D] segments."""

  def __init__(self, cell, mode="rtrl", param_dtype=jnp.float32, name=None):
    """
    Args:
      cell: a cell instance, e.g. `rtrl_jax.CELLS["elstm"](hidden_size=64)`.
      mode: "rtrl" (default), "tbptt" or "bptt".
      param_dtype: dtype of the parameters (inputs must have the same dtype).
      name: haiku module name.
    """
    check_mode("RTRLRecurrent", mode)
    super().__init__(name=name)
    self.cell, self.mode, self.param_dtype = cell, mode, param_dtype

  def _cell_params(self, input_size):
    names, leaves, treedef = _param_structure(self.cell, input_size,
                                              self.param_dtype)
    initialised = {}

    def initializer(index):
      def init(shape, dtype):
        del shape, dtype  # Taken from cell.init.
        if "params" not in initialised:  # One cell.init for all leaves.
          initialised["params"] = jax.tree.leaves(self.cell.init(
              hk.next_rng_key(), input_size, self.param_dtype))
        return initialised["params"][index]
      return init

    values = [hk.get_parameter(name, leaf.shape, leaf.dtype,
                               init=initializer(i))
              for i, (name, leaf) in enumerate(zip(names, leaves))]
    return jax.tree_util.tree_unflatten(treedef, values)

  def __call__(self, inputs, resets, state=None):
    """Runs the segment.

    Args:
      inputs: [T, B, D].
      resets: [T, B] bool, True where the state resets before step t.
      state: `RecurrentState` from the previous segment, or None (zeros).

    Returns:
      (outputs [T, B, H], new state).
    """
    params = self._cell_params(inputs.shape[-1])
    if state is None:
      state = default_state(self.mode, self.cell, params, inputs)
    return run_in_mode(self.mode, self.cell, params, state, inputs, resets)
