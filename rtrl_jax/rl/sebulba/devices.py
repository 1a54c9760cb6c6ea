"""Which devices act and which learn, in one process and across processes."""

import jax
import numpy as np
from jax.sharding import Mesh


def initialize_distributed(coordinator_address=None, num_processes=None,
                           process_id=None, cpu_collectives="gloo"):
  """`jax.distributed.initialize` from flags (or JAX's environment detection).

  With all three arguments None, JAX detects SLURM and TPU-pod settings
  itself. For CPU devices the cross-process collectives use `cpu_collectives`.
  Must run before anything touches a JAX device.
  """
  if jax.config.jax_platforms in (None, "", "cpu") and cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)


def _check_device_ids(name, device_ids, count):
  """Raises a one-line ValueError unless `device_ids` are distinct indices
  of `count` local devices."""
  ok = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count
           for i in device_ids) and len(set(device_ids)) == len(device_ids)
  if not ok:
    raise ValueError(
        f"sebulba.{name}={tuple(device_ids)!r}: must be distinct local device "
        f"indices, and this process has {count} device(s) (0..{count - 1})")


def learner_devices(device_ids=()):
  """The learner devices of every process: local indices `device_ids` (all if
  empty) of each process's devices, process by process."""
  devices = []
  for process in range(jax.process_count()):
    local = [d for d in jax.devices() if d.process_index == process]
    _check_device_ids("learner_device_ids", device_ids, len(local))
    devices += [local[i] for i in device_ids] if device_ids else local
  return devices


def actor_devices(device_ids=(0,)):
  """This process's actor devices: local indices `device_ids` (default 0)."""
  local = jax.local_devices()
  device_ids = device_ids or (0,)
  _check_device_ids("actor_device_ids", device_ids, len(local))
  return [local[i] for i in device_ids]


def local_learner_mesh(mesh):
  """The part of the learner `mesh` on this process's devices: the actors of
  this process put their unrolls there. ValueError if it has none."""
  local = [d for d in mesh.devices.flat
           if d.process_index == jax.process_index()]
  if not local:
    raise ValueError(f"the learner mesh has no device of process "
                     f"{jax.process_index()}; every process needs one")
  return Mesh(np.array(local), ("data",))
