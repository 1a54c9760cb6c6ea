"""README.md's Python example runs as printed: executed, then trained on
consecutive segments of one stream with the state passed on."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
  return re.findall(r"^```python\n(.*?)^```", README.read_text(),
                    re.DOTALL | re.MULTILINE)


def test_readme_example_trains_on_consecutive_segments():
  block = python_blocks()[0]
  example = {}
  exec(compile(block, str(README), "exec"), example)  # pylint: disable=exec-used
  cell, state = example["cell"], example["state"]
  params, opt_state = example["params"], example["opt_state"]
  steps, batch = 5, state.hidden.shape[0]
  inputs = jax.random.normal(jax.random.PRNGKey(1),
                             (3, steps, batch, 16))   # 3 segments of a stream
  targets = 0.1 * jnp.ones((steps, batch, cell.hidden_size))
  no_resets = jnp.zeros((steps, batch), bool)
  loss = lambda p, s, x: float(example["loss_fn"](p, s, x, no_resets,
                                                  targets)[0])
  first_loss = loss(params, state, inputs[0])
  for segment in inputs:
    params, opt_state, state = example["train_step"](
        params, opt_state, state, segment, no_resets, targets)
  # The sensitivities were carried from segment to segment, and the
  # parameters learned.
  assert all(float(jnp.abs(s).max()) > 0
             for s in jax.tree.leaves(state.sensitivities))
  assert not all(np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(params), jax.tree.leaves(example["params"])))
  assert loss(params, example["state"], inputs[0]) < first_loss


def test_readme_r2ac_example_builds_and_steps_the_anakin_system():
  """The second block (the R2AC pieces with explicit arguments) runs as
  printed: one step of the system does `updates_per_call` updates."""
  block = python_blocks()[1]
  example = {}
  exec(compile(block, str(README), "exec"), example)  # pylint: disable=exec-used
  system, metrics = example["system"], example["metrics"]
  assert int(metrics["update"]) == system.updates_per_call == 5
  assert np.isfinite(float(metrics["loss/total"]))
  assert example["agent"].gradient == "rtrl"

