"""The Anakin rollout advances RTRL sensitivities once per unroll, exactly.

`anakin.rollout` acts without sensitivities and then advances S over the
unroll's recorded core inputs and resets (`agent.advance_sensitivities`).
Here, in float64, it is checked against the recursion it replaces: the same
actor stepping S every step (`anakin.env_step` on a state that carries S).
The training step (`anakin.make_step`) advances S after the learner step
(`anakin.advance`), so that XLA can write S(M) over S(0): checked for the
same S(M) and for no copy of S in the compiled update loop.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import r2ac as r2ac_configs
from rtrl_jax.rl import anakin
from rtrl_jax.rl import from_config

# MemoryChain(4): 5-step episodes over 3-step unrolls, all environments in
# step (no desynchronisation): resets at t = 5, 10, 20 (inside unrolls 1, 3,
# 6) and at t = 15, exactly at the start of unroll 5.
UNROLL, NUM_UNROLLS, NUM_ENVS = 3, 7, 4


def float64_actors(core):
  config = r2ac_configs.tiny()
  config.env.kwargs.memory_length = 4
  config.network.core = core
  config.unroll_length, config.num_envs = UNROLL, NUM_ENVS
  config.desync_steps = 0
  train = from_config.anakin_system(config)
  to64 = lambda tree: jax.tree.map(
      lambda x: x.astype(jnp.float64)
      if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
  runner = train.init_synchronised(jax.random.PRNGKey(0))
  # Larger random weights: the policy then depends on the hidden state.
  params = jax.tree.map(lambda x: 3.0 * x, to64(runner.params))
  runner = runner._replace(params=params, opt_state=None,
                           core_state=to64(runner.core_state))
  actors = anakin.Actors(train.env, train.agent, NUM_ENVS, UNROLL, 0, False)
  return actors, runner


def stepwise_rollout(actors, runner):
  """The recursion being replaced: S advanced at every actor step."""
  initial_state = runner.core_state
  runner, steps = jax.lax.scan(lambda r, _: anakin.env_step(actors, r),
                               runner, None, actors.unroll_length)
  return runner, steps, initial_state


def run_both(actors, runner, num_unrolls=NUM_UNROLLS):
  """Per unroll: (deferred (runner, trajectory), step-by-step (runner,
  steps, initial state)), each method carrying its own runner on."""
  deferred = jax.jit(lambda r: anakin.rollout(actors, r)[:2])
  stepwise = jax.jit(lambda r: stepwise_rollout(actors, r))
  out, new, old = [], runner, runner
  for _ in range(num_unrolls):
    new, trajectory = deferred(new)
    old, steps, initial = stepwise(old)
    out.append(((new, trajectory), (old, steps, initial)))
  return out


def assert_close(got, want, what):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert g.dtype == w.dtype, what
    np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=what)


def compare(unrolls):
  """Raises AssertionError unless every unroll's trajectory and final core
  state (hidden and sensitivities) agree to float64 rounding."""
  for k, ((new, trajectory), (old, steps, initial)) in enumerate(unrolls):
    assert_close(trajectory.initial_state, initial, f"unroll {k} initial")
    for name in ("obs", "prev_reward", "reset"):
      assert_close(getattr(trajectory, name)[:-1], steps[name],
                   f"unroll {k} {name}")
    for name in ("action", "behaviour_logits", "reward", "terminated",
                 "truncated", "truncation_value"):
      assert_close(getattr(trajectory, name), steps[name], f"unroll {k} {name}")
    assert_close(new.core_state.hidden, old.core_state.hidden,
                 f"unroll {k} hidden")
    assert_close(new.core_state.sensitivities, old.core_state.sensitivities,
                 f"unroll {k} sensitivities")


def resets_of(unrolls):
  """[K, M, B] resets seen by the core, unroll by unroll."""
  return np.stack([np.asarray(trajectory.reset[:-1])
                   for (_, trajectory), _ in unrolls])


@pytest.mark.parametrize("core", ["elstm", "lru"])
def test_sensitivities_once_per_unroll_equal_stepping_them(core):
  with jax.enable_x64(True):
    actors, runner = float64_actors(core)
    unrolls = run_both(actors, runner)
    resets = resets_of(unrolls)
    # Guards: resets inside unrolls and exactly at an unroll boundary
    # (k >= 1, not the last: the next unroll carries the zeroed S on).
    assert resets[:, 1:].any(), resets[:, :, 0]
    assert any(resets[k, 0].any() for k in range(1, NUM_UNROLLS - 1)), (
        resets[:, :, 0])
    compare(unrolls)
    new = unrolls[-1][0][0]
    assert all(leaf.dtype == jnp.float64
               for leaf in jax.tree.leaves(new.core_state))
    # Not vacuous: S is non-zero, and the policy acted on the hidden state.
    leaves = jax.tree.leaves(new.core_state.sensitivities)
    assert max(float(jnp.abs(s).max()) for s in leaves) > 1e-3
    actions = np.stack([np.asarray(t.action) for (_, t), _ in unrolls])
    assert 0 < actions.mean() < 1


def test_advance_that_drops_the_resets_fails():
  """Negative control: advancing S without the recorded resets (S carried
  across episode starts) is caught by the comparison."""
  with jax.enable_x64(True):
    actors, runner = float64_actors("elstm")
    agent = actors.agent
    advance = agent.advance_sensitivities
    no_resets = lambda params, state, inputs, resets: advance(
        params, state, inputs, jnp.zeros_like(resets))
    broken = actors._replace(agent=agent._replace(
        advance_sensitivities=no_resets))
    # The unrolls before the first reset inside one agree.
    compare(run_both(broken, runner, num_unrolls=1))
    with pytest.raises(AssertionError, match="sensitivities"):
      compare(run_both(broken, runner, num_unrolls=3))


def test_update_advances_s_with_the_actor_parameters_after_the_learner():
  """`make_step` advances S after the learner step (`anakin.advance` with
  `after`), from S(0) with the parameters the actor used: the same S(M) as
  `rollout`, although the learner here changes every parameter."""
  with jax.enable_x64(True):
    actors, runner = float64_actors("elstm")

    def learner_step(params, opt_state, trajectory):
      del trajectory
      return jax.tree.map(lambda p: 1.5 * p + 0.1, params), opt_state, {}

    updated, _ = jax.jit(anakin.make_step(actors, learner_step, 1))(runner)
    rolled, _, _ = jax.jit(lambda r: anakin.rollout(actors, r))(runner)
    assert_close(updated.core_state, rolled.core_state, "core state")
    assert max(float(jnp.abs(s).max())
               for s in jax.tree.leaves(updated.core_state.sensitivities)) > 0
    changed = jax.tree.map(lambda a, b: bool((a != b).any()), updated.params,
                           runner.params)
    assert all(jax.tree.leaves(changed))


def copies_of_sensitivities_per_computation(hlo, shape):
  """{computation name: copies of an f32 `shape` array} in compiled HLO."""
  counts, name = {}, None
  for line in hlo.split("\n"):
    if line and not line.startswith(" ") and line.rstrip().endswith("{"):
      name = line.split(" ")[1] if line.startswith("ENTRY") else line.split(
          " ")[0]
    elif " copy(" in line and f"= f32[{shape}]" in line:
      counts[name] = counts.get(name, 0) + 1
  return counts


def compiled_rtrl_call():
  """The compiled CPU program of one Anakin RTRL call (eLSTM-8, B = 4)."""
  config = r2ac_configs.tiny()
  config.network.hidden_size, config.network.encoder_sizes = 8, [8]
  config.num_envs, config.unroll_length, config.updates_per_call = 4, 3, 2
  train = from_config.anakin_system(config)
  runner = jax.eval_shape(train.init, jax.random.PRNGKey(0))
  return train.step.lower(runner).compile().as_text()


def test_compiled_update_writes_s_in_place(monkeypatch):
  """The compiled CPU program as it runs (the runner donated) never copies
  the [B, N, D] sensitivities: the advance waits for the learner, so S(M)
  overwrites S(0) in the donated buffer (one copy of S resident, what
  experiments/plan_scale.py's --memory=compiled measures). Negative
  control: without that wait (`after` dropped) the update loop copies S(0)
  every update."""
  assert jax.default_backend() == "cpu"
  shape = "4,8,9"            # B, N, D = encoder features + 1
  hlo = compiled_rtrl_call()
  assert f"f32[{shape}]" in hlo and "input_output_alias" in hlo
  copies = copies_of_sensitivities_per_computation(hlo, shape)
  assert not copies, copies
  advance = anakin.advance
  monkeypatch.setattr(anakin, "advance",
                      lambda *args, after=None: advance(*args))
  copies = copies_of_sensitivities_per_computation(compiled_rtrl_call(),
                                                   shape)
  assert any(not k.startswith("%main") for k in copies), copies
