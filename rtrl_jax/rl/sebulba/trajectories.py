"""Trajectories between the actors and the learner: their shardings, how the
learner joins the actor threads' unrolls into one batch, and their shapes."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from rtrl_jax.rl.agents.r2ac import Trajectory


def trajectory_shardings(mesh, example):
  """NamedShardings of a Trajectory: environment axis over "data".

  Time-major leaves [T, B, ...] get P(None, "data"); the initial core state
  [B, ...] gets P("data").
  """
  time_major = NamedSharding(mesh, P(None, "data"))
  return example._replace(
      initial_state=jax.tree.map(lambda _: NamedSharding(mesh, P("data")),
                                 example.initial_state),
      **{field: jax.tree.map(lambda _: time_major, getattr(example, field))
         for field in Trajectory._fields if field != "initial_state"})


@jax.jit
def _concatenate(pieces):
  """Trajectories on one device joined along the environment axis (0 for
  the initial state, 1 for the time-major fields), in one call: op-by-op
  concatenation dispatches one computation per leaf."""
  joined = {field: jax.tree.map(lambda *xs: jnp.concatenate(xs, 1),
                               *[getattr(p, field) for p in pieces])
            for field in Trajectory._fields if field != "initial_state"}
  initial = jax.tree.map(lambda *xs: jnp.concatenate(xs, 0),
                         *[p.initial_state for p in pieces])
  return Trajectory(initial_state=initial, **joined)


def combine(trajectories, shardings, num_processes=1):
  """One global Trajectory from per-thread ones, without cross-device copies.

  Each input is sharded over this process's learner devices; the piece on
  device d of the result is the concatenation (along the environment axis) of
  the inputs' pieces on d. The global batch is thus a permutation of the
  concatenated batches, which the summed loss does not see.
  """
  if len(trajectories) == 1 and num_processes == 1:
    return trajectories[0]
  devices = list(jax.tree.leaves(shardings)[0].addressable_devices)

  def piece(leaf, device):
    return next(s.data for s in leaf.addressable_shards if s.device == device)

  # Each device's piece of every input, joined there in one call.
  on_device = [[jax.tree.map(lambda leaf, d=device: piece(leaf, d), t)
                for t in trajectories] for device in devices]
  joined = [pieces[0] if len(pieces) == 1 else _concatenate(pieces)
            for pieces in on_device]

  def assemble(sharding, axis, *pieces):
    shape = list(pieces[0].shape)
    shape[axis] *= len(devices) * num_processes
    return jax.make_array_from_single_device_arrays(
        tuple(shape), sharding, list(pieces))

  initial = jax.tree.map(lambda s, *xs: assemble(s, 0, *xs),
                         shardings.initial_state,
                         *[j.initial_state for j in joined])
  rest = {field: jax.tree.map(lambda s, *xs: assemble(s, 1, *xs),
                              getattr(shardings, field),
                              *[getattr(j, field) for j in joined])
          for field in Trajectory._fields if field != "initial_state"}
  return Trajectory(initial_state=initial, **rest)


def example_trajectory(agent, params, suite, num_envs, unroll_length):
  """A zero Trajectory with the shapes and dtypes the actors produce."""
  m, b = unroll_length, num_envs
  zeros = lambda *shape, dtype=jnp.float32: jnp.zeros(shape, dtype)
  logits = jnp.zeros((m, b, suite.num_actions), jnp.float32)
  return Trajectory(
      initial_state=agent.initial_core_state(params, b),
      obs=zeros(m + 1, b, *suite.obs_shape, dtype=jnp.uint8),
      prev_reward=zeros(m + 1, b), reset=zeros(m + 1, b, dtype=bool),
      action=zeros(m, b, dtype=jnp.int32), behaviour_logits=logits,
      reward=zeros(m, b), terminated=zeros(m, b, dtype=bool),
      truncated=zeros(m, b, dtype=bool), truncation_value=None,
      valid=jnp.ones((m, b), bool))
