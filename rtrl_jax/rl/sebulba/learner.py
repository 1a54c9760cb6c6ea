"""The learner: one update on one unroll of every actor thread.

The update is `r2ac.make_learner_step(agent, optimizer)`, the same function
the Anakin system scans over, jitted with replicated parameters and the batch
split over the learner mesh's "data" axis. The loss is a sum over
environments, so the update equals one on the concatenated batch.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rtrl_jax.rl import from_config
from rtrl_jax.rl.agents.r2ac import Trajectory, make_learner_step
from rtrl_jax.rl.episodes import EpisodeStats
from rtrl_jax.rl.sebulba.trajectories import (combine, example_trajectory,
                                              trajectory_shardings)


class LearnerState(NamedTuple):
  params: Any
  opt_state: Any
  update: jax.Array   # learner updates done (= parameter version)


def make_agent_and_optimizer(config, suite):
  """The R2AC agent for `suite` and its optimizer, as `config` sets them."""
  return (from_config.agent(config, suite.obs_shape, suite.num_actions),
          from_config.optimizer(config))


def init_learner_state(agent, optimizer, key) -> LearnerState:
  """Fresh parameters (from `key`), optimizer state and update counter 0."""
  params = agent.init(key)
  return LearnerState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


class Learner(NamedTuple):
  """The learner's functions and the shardings its batches arrive in."""
  init: Callable[[jax.Array], LearnerState]   # jitted, replicated output
  step: Callable[..., Any]          # make_learner_step(agent, optimizer)
  # `step` jitted: (params, opt_state, global batch) -> (params, opt_state,
  # metrics), all replicated.
  jitted_step: Callable[..., Any]
  local_shardings: Trajectory       # this process's learner devices
  global_shardings: Trajectory      # the whole learner mesh


def make_learner(agent, optimizer, mesh, local_mesh, suite, num_envs,
                 unroll_length) -> Learner:
  """The learner on `mesh` for unrolls of `num_envs` environments (one actor
  thread's) and `unroll_length` steps."""
  replicated = NamedSharding(mesh, P())
  # Every process computes the same replicated state (multi-host safe).
  init = jax.jit(lambda key: init_learner_state(agent, optimizer, key),
                 out_shardings=replicated)
  example_params = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
  example = jax.eval_shape(
      lambda p: example_trajectory(agent, p, suite, num_envs, unroll_length),
      example_params)
  global_shardings = trajectory_shardings(mesh, example)
  step = make_learner_step(agent, optimizer)
  jitted_step = jax.jit(
      step, in_shardings=(replicated, replicated, global_shardings),
      out_shardings=(replicated, replicated, replicated))
  return Learner(init, step, jitted_step,
                 trajectory_shardings(local_mesh, example), global_shardings)


def update(state, learner, queues, server, timings):
  """One learner update on the next unroll of every queue (one per actor
  thread), its parameters published to the actors as the next version.

  Returns (new state, the learner step's metrics, the unrolls used).
  """
  with timings.timed("learner/queue_get"):
    unrolls = [q.get() for q in queues]
  with timings.timed("learner/combine"):
    batch = combine([u.trajectory for u in unrolls], learner.global_shardings,
                    jax.process_count())
  with timings.timed("learner/step"):
    params, opt_state, metrics = learner.jitted_step(
        state.params, state.opt_state, batch)
    jax.block_until_ready(params)
  version = int(state.update)
  state = LearnerState(params, opt_state, state.update + 1)
  with timings.timed("learner/publish"):
    server.publish(params, version + 1)
  return state, metrics, unrolls


def update_metrics(metrics, version, unrolls):
  """The update's logged metrics: the learner step's, the policy lag
  (`version` − behaviour version) and the episodes that ended in the
  unrolls."""
  lag = [version - u.version for u in unrolls]
  episodes = sum((u.episodes for u in unrolls), EpisodeStats.zero())
  return_mean, length_mean = episodes.means()
  out = {k: v.addressable_data(0) for k, v in metrics.items()}
  out.update({
      "policy_lag_mean": float(np.mean(lag)),
      "policy_lag_max": float(np.max(lag)),
      "episodes": float(episodes.episodes),
      "episode_return_mean": float(return_mean),
      "episode_length_mean": float(length_mean),
  })
  return out
