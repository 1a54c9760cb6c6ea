"""Copy task: data format and reproducibility, RTRL == BPTT gradients, modes."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl_jax
from rtrl_jax.tasks import copy_task
from rtrl_jax.tasks import from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_configs():
  spec = importlib.util.spec_from_file_location(
      "copy_task_configs",
      os.path.join(ROOT, "experiments", "configs", "copy_task.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(**train):
  config = load_configs().get_config("tiny")
  for key, value in train.items():
    setattr(config.train, key, value)
  return config


def test_batch_format():
  max_length, batch_size = 6, 256
  batch = copy_task.sample_batch(jax.random.PRNGKey(0), batch_size, max_length)
  assert batch.inputs.shape == (12, batch_size, 3)
  assert batch.targets.shape == batch.mask.shape == (12, batch_size)
  np.testing.assert_array_equal(batch.inputs.sum(-1), 1.0)  # one-hot
  tokens = np.asarray(batch.inputs.argmax(-1))
  targets, mask = np.asarray(batch.targets), np.asarray(batch.mask)
  lengths = np.asarray(batch.lengths)
  assert lengths.min() == 1 and lengths.max() == max_length
  for b in range(batch_size):
    length = lengths[b]
    pattern = tokens[:length, b]
    assert set(pattern) <= {0, 1}
    np.testing.assert_array_equal(tokens[length:, b], copy_task.BLANK)
    np.testing.assert_array_equal(targets[:length, b], copy_task.BLANK)
    np.testing.assert_array_equal(targets[length:2 * length, b], pattern)
    np.testing.assert_array_equal(targets[2 * length:, b], copy_task.BLANK)
    np.testing.assert_array_equal(np.flatnonzero(mask[:, b]),
                                  np.arange(length, 2 * length))
  bits = tokens[tokens != copy_task.BLANK]
  assert 0.4 < bits.mean() < 0.6


def test_data_is_reproducible_from_the_seed():
  key = jax.random.PRNGKey(3)
  first, again = (copy_task.sample_batch(key, 16, 5) for _ in range(2))
  other = copy_task.sample_batch(jax.random.PRNGKey(4), 16, 5)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first.inputs, other.inputs)
  valid, test = copy_task.evaluation_sets(42, 32, 32, 5)
  valid_again, _ = copy_task.evaluation_sets(42, 32, 32, 5)
  np.testing.assert_array_equal(valid.inputs, valid_again.inputs)
  assert not np.array_equal(valid.inputs, test.inputs)


def test_train_stream_depends_on_data_position_only():
  config = tiny_config()
  state = from_config.init_train_state(config)
  step = jax.jit(from_config.train_step(config))
  _, metrics_a = step(state._replace(data_position=jnp.asarray(7, jnp.int32)))
  _, metrics_b = step(state._replace(data_position=jnp.asarray(7, jnp.int32)))
  _, metrics_c = step(state._replace(data_position=jnp.asarray(8, jnp.int32)))
  assert float(metrics_a["loss"]) == float(metrics_b["loss"])
  assert float(metrics_a["loss"]) != float(metrics_c["loss"])


def test_library_takes_explicit_arguments_as_from_config_builds_them():
  """No config needed: a cell, an optax optimizer and a Training make the
  same train step as the config does (from_config is only unpacking)."""
  config = tiny_config(mode="tbptt", segment_length=4,
                       update_every="sequence")
  cell = rtrl_jax.ELSTM(16, init_scale=0.1, forget_bias=0.0)
  optimizer = copy_task.make_optimizer(1e-2)
  training = copy_task.Training(mode="tbptt", segment_length=4,
                                update_every="sequence", batch_size=8,
                                max_length=4)
  state = copy_task.init_train_state(cell, optimizer, seed=1)
  explicit, _ = jax.jit(copy_task.make_train_step(cell, optimizer,
                                                  training))(state)
  configured, _ = jax.jit(from_config.train_step(config))(
      from_config.init_train_state(config))
  for a, b in zip(jax.tree.leaves(explicit), jax.tree.leaves(configured)):
    np.testing.assert_array_equal(a, b)
  assert copy_task.describe_training("tbptt", 4, "sequence") == (
      from_config.describe_training(config.train)) == "tbptt M=4, per sequence"


def _max_relative_error(estimate, truth):
  errors = jax.tree.map(
      lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)),
      estimate, truth)
  return max(jax.tree.leaves(errors))


@pytest.mark.parametrize("segment_length", [1, 4])
def test_rtrl_sequence_gradient_equals_bptt(segment_length):
  """Σ_s ∇ℓ_s by RTRL on k-step segments is the full BPTT gradient."""
  config = tiny_config(mode="bptt", update_every="sequence")
  params = from_config.init_train_state(config).params
  batch = copy_task.sample_batch(jax.random.PRNGKey(1), 8,
                                 config.data.max_length)
  bptt_grads, bptt_metrics = jax.jit(
      from_config.sequence_gradient(config))(params, batch)
  config = tiny_config(mode="rtrl", segment_length=segment_length)
  rtrl_grads, rtrl_metrics = jax.jit(
      from_config.sequence_gradient(config))(params, batch)
  assert _max_relative_error(rtrl_grads, bptt_grads) < 1e-4
  np.testing.assert_allclose(rtrl_metrics["loss"], bptt_metrics["loss"],
                             rtol=1e-6)
  # Negative control: truncation at the same segments loses the past.
  config = tiny_config(mode="tbptt", segment_length=segment_length)
  tbptt_grads, _ = jax.jit(
      from_config.sequence_gradient(config))(params, batch)
  assert _max_relative_error(tbptt_grads["cell"]["recurrent"],
                             bptt_grads["cell"]["recurrent"]) > 1e-2


@pytest.mark.parametrize("mode,segment_length,update_every", [
    ("rtrl", 1, "segment"), ("rtrl", 2, "sequence"), ("tbptt", 2, "segment"),
    ("bptt", 2, "sequence")])
def test_train_step_modes(mode, segment_length, update_every):
  config = tiny_config(mode=mode, segment_length=segment_length,
                       update_every=update_every)
  state = from_config.init_train_state(config)
  new_state, metrics = jax.jit(from_config.train_step(config))(state)
  assert int(new_state.step) == 1 and int(new_state.data_position) == 1
  assert all(np.isfinite(float(v)) for v in metrics.values())
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params,
                         new_state.params)
  assert all(jax.tree.leaves(changed))
  if update_every == "segment":
    batch = copy_task.sample_batch(jax.random.fold_in(state.rng, 0),
                                   config.train.batch_size,
                                   config.data.max_length)
    per_segment = np.asarray(batch.mask).reshape(-1, segment_length,
                                                 config.train.batch_size)
    assert int(metrics["updates"]) == int(per_segment.any(axis=(1, 2)).sum())
  else:
    assert int(metrics["updates"]) == 1


def test_online_rtrl_with_one_segment_is_bptt():
  """k = T: one online update per sequence, the same as a BPTT step."""
  config = tiny_config()
  full = 2 * config.data.max_length
  state = from_config.init_train_state(config)
  online = from_config.train_step(tiny_config(
      mode="rtrl", segment_length=full, update_every="segment"))
  whole = from_config.train_step(tiny_config(mode="bptt",
                                                update_every="sequence"))
  online_state, _ = jax.jit(online)(state)
  bptt_state, _ = jax.jit(whole)(state)
  for online_leaf, bptt_leaf in zip(jax.tree.leaves(online_state.params),
                                   jax.tree.leaves(bptt_state.params)):
    np.testing.assert_allclose(online_leaf, bptt_leaf, rtol=1e-5, atol=1e-7)


def test_evaluate_counts_only_copy_positions():
  """A head that always says 1 gets exactly the all-ones patterns right."""
  config = tiny_config()
  params = from_config.init_train_state(config).params
  params["head"] = {"w": jnp.zeros_like(params["head"]["w"]),
                    "b": jnp.asarray([0.0, 1.0])}
  valid, _ = copy_task.evaluation_sets(0, 64, 32, config.data.max_length)
  metrics = jax.jit(from_config.evaluate(config))(params, valid)
  mask, targets = np.asarray(valid.mask), np.asarray(valid.targets)
  all_ones = np.all((targets == 1) | ~mask, axis=0).mean()
  ones = (targets[mask] == 1).mean()
  np.testing.assert_allclose(metrics["accuracy"], all_ones, rtol=1e-6)
  np.testing.assert_allclose(metrics["token_accuracy"], ones, rtol=1e-6)
  # Logits (0, 1) everywhere: cross-entropy log(1 + e^-1) for a 1 and
  # log(1 + e) for a 0, averaged over the copy positions only (the training
  # loss shares this masked cross-entropy).
  per_label = {0: np.log1p(np.e), 1: np.log1p(np.exp(-1.0))}
  expected = np.mean([per_label[int(t)] for t in targets[mask]])
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
