"""The R2AC gradient-alignment probe: RTRL = BPTT at fixed θ, TBPTT does not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import r2ac as r2ac_configs
from rtrl_jax.rl import from_config
from rtrl_jax.rl import anakin
from rtrl_jax.rl.agents import alignment


# The float64 window: 5-step episodes (memory_length 4) over 7 unrolls of 3
# steps (t = 0..20) reset at t = 5, 10, 20 (inside unrolls 1, 3, 6) and at
# t = 15, exactly at the start of unroll 5, whose zeroed sensitivities
# unrolls 5 and 6 then consume.
NUM_UNROLLS = 7


def probe_config(**changes):
  config = r2ac_configs.tiny()
  # 5-step episodes across 3-step unrolls: the cue is seen in one unroll and
  # rewarded in the next.
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
  """The probe's scalars and the window's resets [K, M+1, B] it acted on."""
  with jax.enable_x64(float64):
    train = from_config.anakin_system(config)
    if float64:
      train = float64_train(train)
    params = train.init(jax.random.PRNGKey(seed)).params
    # Larger random weights so that the policy depends on its memory.
    params = jax.tree.map(lambda x: 3.0 * x, params)
    probe = alignment.make_alignment_probe(train, num_unrolls)
    key = jax.random.PRNGKey(1)
    out = {k: float(v) for k, v in probe(params, key).items()}
    return out, window_resets(config, train, params, key, num_unrolls)


def window_resets(config, train, params, key, num_unrolls):
  """trajectory.reset [K, M+1, B] of the probe's window, acted as it does."""
  @jax.jit
  def resets(params, key):
    runner = train.init(key)._replace(params=params)
    runner = runner._replace(
        core_state=train.agent.initial_core_state(params, config.num_envs))
    act = lambda runner, _: train.rollout(runner)[:2]
    return jax.lax.scan(act, runner, None, num_unrolls)[1].reset
  return np.asarray(resets(params, key))


def float64_train(train):
  """`train` whose `init` and `start` give float64 parameters, optimizer
  state and core state (so a float64 network; rewards stay the env's
  float32)."""
  to64 = lambda tree: jax.tree.map(
      lambda x: x.astype(jnp.float64)
      if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

  def as64(make):
    def make64(key):
      runner = make(key)
      return runner._replace(params=to64(runner.params),
                             opt_state=to64(runner.opt_state),
                             core_state=to64(runner.core_state))
    return make64

  return train._replace(init=as64(train.init), init_synchronised=as64(train.init_synchronised))


def assert_boundary_and_inner_resets(resets):
  """Some unroll k >= 1 but not the last starts with a reset (its shipped
  sensitivities are zeroed and the next unroll carries them on), and some
  reset falls strictly inside an unroll."""
  num_unrolls, steps = resets.shape[0], resets.shape[1] - 1
  at_boundary = [k for k in range(1, num_unrolls) if resets[k, 0].any()]
  assert at_boundary and min(at_boundary) < num_unrolls - 1, resets[:, :, 0]
  # reset[k, M] is reset[k + 1, 0] (the bootstrap step).
  np.testing.assert_array_equal(resets[:-1, steps], resets[1:, 0])
  assert resets[:, 1:steps].any(), resets[:, :, 0]


@pytest.mark.parametrize("gradient", ["rtrl", "tbptt"])
def test_rtrl_matches_window_bptt_and_tbptt_does_not(gradient):
  # The run's own gradient type only changes how the probe's data is acted;
  # both methods are measured either way. In float64, with resets inside
  # unrolls and exactly at an unroll boundary (checked on the window acted).
  out, resets = run_probe(probe_config(gradient=gradient),
                          num_unrolls=NUM_UNROLLS, float64=True)
  assert_boundary_and_inner_resets(resets)
  assert out["align/rtrl/recurrent/relative_error"] <= 1e-8, out
  assert out["align/rtrl/recurrent/cosine"] == pytest.approx(1.0, abs=1e-12)
  # Negative control: the same probe must see the truncation.
  assert out["align/tbptt/recurrent/relative_error"] > 1e-2, out
  assert out["align/tbptt/recurrent/cosine"] < 0.999
  # Encoder and heads are truncated to the unroll under both methods.
  assert out["align/rtrl/all/cosine"] < 1.0
  assert out["align/rtrl/all/relative_error"] > 1e-6
  assert np.isfinite(out["sens/norm_mean"]) and out["sens/norm_mean"] > 0
  assert out["sens/norm_max"] >= out["sens/norm_mean"]


def test_feedforward_core_has_nothing_to_truncate():
  out, _ = run_probe(probe_config(core="feedforward", gradient="tbptt"))
  assert out["align/tbptt/all/cosine"] == pytest.approx(1.0, abs=1e-5)
  assert "align/rtrl/all/cosine" not in out
  assert not any(k.startswith("sens/") for k in out)


def test_lstm_core_measures_tbptt_only():
  out, _ = run_probe(probe_config(core="lstm", gradient="tbptt"))
  assert out["align/tbptt/recurrent/cosine"] < 0.999
  assert "align/rtrl/recurrent/cosine" not in out


def test_bad_window_is_rejected():
  config = probe_config()
  with pytest.raises(ValueError, match="num_unrolls must be >= 1, got 0"):
    alignment.make_alignment_probe(from_config.anakin_system(config), 0)


def run_training_probe(learning_rate, num_unrolls=4):
  """In float64: the last unroll (t = 9..11) gets sensitivities shipped
  across the reset at t = 5 and resets itself at t = 10."""
  config = probe_config()
  config.optimizer.learning_rate = learning_rate
  config.optimizer.anneal_lr = False
  with jax.enable_x64(True):
    train = float64_train(from_config.anakin_system(config))
    runner = train.init(jax.random.PRNGKey(0))
    probe = alignment.make_training_alignment_probe(train, num_unrolls)
    out = probe(runner.params, runner.opt_state, jax.random.PRNGKey(1))
    return {k: float(v) for k, v in out.items()}


def test_training_probe_sees_stale_sensitivities_only_when_params_move():
  # θ fixed (lr 0): the learner's RTRL gradient, built on the sensitivities
  # the actor shipped, is BPTT's up to float64 rounding; TBPTT's is not.
  still = run_training_probe(0.0)
  assert still["align_train/param_change"] == 0.0
  assert still["align_train/rtrl/recurrent/relative_error"] <= 1e-8, still
  assert still["align_train/rtrl/recurrent/cosine"] == pytest.approx(
      1.0, abs=1e-12)
  assert still["align_train/tbptt/recurrent/relative_error"] > 1e-2, still
  assert still["align_train/tbptt/recurrent/cosine"] < 0.999
  moving = run_training_probe(3e-2)
  assert moving["align_train/param_change"] > 1e-3
  # The shipped sensitivities were made under earlier θ: no longer exact.
  assert moving["align_train/rtrl/recurrent/relative_error"] > 1e-4, moving
  assert moving["align_train/rtrl/recurrent/cosine"] < 1 - 1e-5


def test_training_probe_needs_an_rtrl_run():
  config = probe_config(gradient="tbptt")
  with pytest.raises(ValueError, match="needs gradient='rtrl'"):
    alignment.make_training_alignment_probe(from_config.anakin_system(config),
                                            3)


def test_probe_refuses_full_episode_bptt_runs():
  config = probe_config(gradient="bptt", unroll_length=5)
  config.env.kwargs.max_steps_in_episode = 5
  with pytest.raises(ValueError, match="restarts episodes every unroll"):
    alignment.make_alignment_probe(from_config.anakin_system(config), 2)
