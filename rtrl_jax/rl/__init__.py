"""Reinforcement learning with RTRL cores (needs the `[rl]` extra).

* `agents/`: the R2AC agent (`r2ac`: act, the IMPALA/V-trace loss, the
  learner step), its encoders (`networks`) and the gradient-alignment probe
  (`alignment`).
* `anakin`: the whole loop in one jitted program over JAX environments.
* `sebulba`: envpool actor threads feeding learner devices.
* `envs` (JAX environments: gymnax, xminigrid, MemoryChain) and
  `envpool_envs` (the envpool suites Sebulba runs).
* `evaluation`: episode returns of a trained agent, for either system.
"""
