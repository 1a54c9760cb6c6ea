"""The R2AC gradient-alignment probe: RTRL = BPTT at fixed θ, TBPTT does not."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import r2ac as r2ac_configs
from rtrl_jax import anakin
from rtrl_jax.agents import alignment


def probe_config(**changes):
  config = r2ac_configs.tiny()
  # 5-step episodes across 3-step unrolls: the cue is seen in one unroll and
  # rewarded in the next, with resets inside unrolls and at their boundaries.
  config.env.kwargs.memory_length = 4
  config.unroll_length = 3
  config.num_envs = 4
  for key, value in changes.items():
    if key == "core":
      config.network.core = value
    else:
      setattr(config, key, value)
  return config


def run_probe(config, num_unrolls=4, seed=0, float64=False):
  with jax.enable_x64(float64):
    train = anakin.make_train(config)
    if float64:
      train = float64_train(train)
    params = train.init(jax.random.PRNGKey(seed)).params
    # Larger random weights so that the policy depends on its memory.
    params = jax.tree.map(lambda x: 3.0 * x, params)
    probe = alignment.make_alignment_probe(config, train, num_unrolls)
    return {k: float(v)
            for k, v in probe(params, jax.random.PRNGKey(1)).items()}


def float64_train(train):
  """`train` with float64 parameters (so float64 network and core state)."""
  init = train.init

  def init64(key):
    runner = init(key)
    return runner._replace(
        params=jax.tree.map(lambda x: x.astype(jnp.float64), runner.params))

  return train._replace(init=init64)


def relative_error(out, method):
  """‖g − g*‖ / ‖g*‖ of the core's θ_r gradient, from cosine and norm ratio."""
  cosine = out[f"align/{method}/recurrent/cosine"]
  ratio = out[f"align/{method}/recurrent/relative_norm"]
  return math.sqrt(max(0.0, ratio * ratio + 1 - 2 * ratio * cosine))


@pytest.mark.parametrize("gradient", ["rtrl", "tbptt"])
def test_rtrl_matches_window_bptt_and_tbptt_does_not(gradient):
  # The run's own gradient type only changes how the probe's data is acted;
  # both methods are measured either way. In float64, where cosine and norm
  # ratio resolve a relative error of ~1e-8 (float32's cosine only ~3e-4).
  out = run_probe(probe_config(gradient=gradient), float64=True)
  assert relative_error(out, "rtrl") <= 1e-6, out
  # Negative control: the same probe must see the truncation.
  assert relative_error(out, "tbptt") > 1e-2, out
  assert out["align/tbptt/recurrent/cosine"] < 0.999
  # Encoder and heads are truncated to the unroll under both methods.
  assert out["align/rtrl/all/cosine"] < 1.0
  assert np.isfinite(out["sens/norm_mean"]) and out["sens/norm_mean"] > 0
  assert out["sens/norm_max"] >= out["sens/norm_mean"]


def test_feedforward_core_has_nothing_to_truncate():
  out = run_probe(probe_config(core="feedforward", gradient="tbptt"))
  assert out["align/tbptt/all/cosine"] == pytest.approx(1.0, abs=1e-5)
  assert "align/rtrl/all/cosine" not in out
  assert not any(k.startswith("sens/") for k in out)


def test_lstm_core_measures_tbptt_only():
  out = run_probe(probe_config(core="lstm", gradient="tbptt"))
  assert out["align/tbptt/recurrent/cosine"] < 0.999
  assert "align/rtrl/recurrent/cosine" not in out


def test_bad_window_is_rejected():
  config = probe_config()
  with pytest.raises(ValueError, match="num_unrolls must be >= 1, got 0"):
    alignment.make_alignment_probe(config, anakin.make_train(config), 0)


def run_training_probe(learning_rate, num_unrolls=4):
  config = probe_config()
  config.optimizer.learning_rate = learning_rate
  config.optimizer.anneal_lr = False
  train = anakin.make_train(config)
  runner = train.init(jax.random.PRNGKey(0))
  probe = alignment.make_training_alignment_probe(config, train, num_unrolls)
  out = probe(runner.params, runner.opt_state, jax.random.PRNGKey(1))
  return {k: float(v) for k, v in out.items()}


def test_training_probe_sees_stale_sensitivities_only_when_params_move():
  still = run_training_probe(0.0)
  assert still["align_train/param_change"] == 0.0
  assert still["align_train/rtrl/recurrent/cosine"] == pytest.approx(1.0,
                                                                     abs=1e-5)
  assert still["align_train/tbptt/recurrent/cosine"] < 0.999
  moving = run_training_probe(3e-2)
  assert moving["align_train/param_change"] > 1e-3
  # The shipped sensitivities were made under earlier θ: no longer exact.
  assert moving["align_train/rtrl/recurrent/cosine"] < 1 - 1e-5


def test_training_probe_needs_an_rtrl_run():
  config = probe_config(gradient="tbptt")
  with pytest.raises(ValueError, match="needs gradient='rtrl'"):
    alignment.make_training_alignment_probe(config, anakin.make_train(config),
                                            3)


def test_probe_refuses_full_episode_bptt_runs():
  config = probe_config(gradient="bptt", unroll_length=5)
  config.env.kwargs.max_steps_in_episode = 5
  with pytest.raises(ValueError, match="restarts episodes every unroll"):
    alignment.make_alignment_probe(config, anakin.make_train(config), 2)
