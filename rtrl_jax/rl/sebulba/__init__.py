"""Sebulba: R2AC with envpool actor threads and a sharded learner.

    system = make_system(config)                      # agent, suite, meshes
    state = system.init(jax.random.PRNGKey(seed))     # LearnerState
    system.start(state)                               # actor threads run
    state, metrics = system.step(state)               # one learner update
    system.stop()

The parts, one module each (Podracer's Sebulba, Hessel et al. 2021; the
split follows Stoix's Sebulba systems):

* `actor`: one actor thread. Per env group and step, `receive` (envpool's
  result recorded, the group advanced), `act` (the policy step) and, every
  unroll, `ship` (the one place a `Trajectory` is built, put on the learner
  devices and queued); `run_actor` is the loop.
* `channels`: `ParameterServer` (parameters to the actor devices) and
  `TrajectoryQueue` (unrolls to the learner), both stop-aware.
* `learner`: `update`, one learner step on one unroll of every thread.
* `trajectories`: their shardings, `combine` (the global batch without
  cross-device copies), `example_trajectory`.
* `devices`: actor and learner devices, `initialize_distributed`.
* `system`: `make_system` and `System`, whose fields are the parts.

Data flow (R2AC's recurrent actor as in Irie et al.'s torchbeast code):

* Actor threads (`sebulba.num_actor_threads` per process), each with its own
  envpool instance of `num_envs_per_thread` environments, call a jitted
  `agent.act` on their actor device. They carry per-environment core state
  *and RTRL sensitivities* on that device; both are reset where an episode
  starts (the `reset` input of `agent.act`).
* Env groups: a thread's environments are split into `sebulba.env_groups`
  groups of consecutive env_ids, envpool's batch_size = one group. The
  thread sends group g's actions and runs the policy on group g+1 while
  envpool's worker steps group g (with one worker, envpool answers sends in
  order; `check_group` fails loudly otherwise). 1 group: synchronous.
* envpool resets an ended environment on its *next* step and ignores that
  step's action. The actor keeps that step in the trajectory with
  `valid = False`: the core reads the ended episode's final observation, and
  the step after starts the new episode (reset, zero reward input). The loss
  gives ignored steps ρ = 0 and no entropy, which makes it equal to the loss
  of the trajectory without them (r2ac.py; tests/r2ac_test.py).
* Truncation is `done and info["elapsed_step"] >= max_episode_steps`
  (envpool #239: its own flags are not trusted); terminated = done and not
  truncated. A step that ends the MDP exactly at the limit counts as
  truncated. A truncated step bootstraps from V(final observation), which
  the learner computes anyway at the ignored step after it
  (`truncation_value=None` in the Trajectory): the actor runs no extra
  value pass, and the bootstrap uses the learner's parameters like every
  other V-trace target.
* Each unroll of M steps (of every group) becomes a `Trajectory` (its
  initial core state and sensitivities, M+1 observations, envs in env_id
  order) that the actor thread moves onto the
  learner devices with `jax.device_put` onto a `NamedSharding` (environment
  axis split over the "data" axis of the learner mesh) and hands to the
  learner through a bounded queue.
* The learner takes one unroll from every actor thread (of every process),
  joins them along the environment axis without moving data between devices
  (`jax.make_array_from_single_device_arrays`) and applies
  `r2ac.make_learner_step`, the same function as the Anakin system, jitted
  with replicated parameters. The loss is a sum over environments, so the
  update equals one on the concatenated batch.
* A `ParameterServer` copies each new parameter version to every actor device
  (blocking until the copy is done, so actors never stall on it). Actors take
  the latest version at the start of each unroll; `synchronous=True` makes
  unroll n wait for version n (zero policy lag, deterministic). Policy lag =
  learner version − behaviour version, logged.

Errors: an actor thread that raises stops the system; the learner raises
`ActorError` carrying the thread's traceback (no hang). Multi-host: call
`initialize_distributed` first; the learner mesh then spans the learner
devices of every process, each process runs its own actors.
"""

from rtrl_jax.rl.sebulba.actor import (check_group, episode_flags,
                                       recv_step)
from rtrl_jax.rl.sebulba.channels import (POLL_SECONDS, ActorError,
                                          ParameterServer, TrajectoryQueue,
                                          Unroll)
from rtrl_jax.rl.sebulba.devices import (actor_devices, initialize_distributed,
                                         learner_devices)
from rtrl_jax.rl.sebulba.learner import (LearnerState, init_learner_state,
                                         make_agent_and_optimizer)
from rtrl_jax.rl.sebulba.system import System, make_system
from rtrl_jax.rl.sebulba.timing import Timings
from rtrl_jax.rl.sebulba.trajectories import (combine, example_trajectory,
                                              trajectory_shardings)
