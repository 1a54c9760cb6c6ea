"""Multi-host Sebulba: 2 processes on 127.0.0.1 with one CPU device each.

`jax.distributed.initialize` joins them; the learner mesh spans both
processes; each runs its own MiniGrid actor thread. The test checks that the
parameters stay bit-identical across the processes for 3 updates and that the
second update equals a single-process update on both processes' second
unrolls (which start mid-episode: their shipped states and sensitivities
enter the loss and the RTRL gradient).
"""

import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

pytest.importorskip("envpool")

WORKER = textwrap.dedent("""
    import hashlib, pickle, sys
    import numpy as np
    process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    from rtrl_jax.rl import sebulba
    sebulba.initialize_distributed(f"127.0.0.1:{port}", 2, process_id)
    import jax
    from experiments.configs import sebulba as configs
    config = configs.tiny()
    config.sebulba.num_envs_per_thread = 4
    config.sebulba.synchronous = True
    unrolls = []
    system = sebulba.make_system(
        config, trajectory_hook=lambda _, t: unrolls.append(t))
    assert jax.process_count() == 2 and system.mesh.size == 2
    state = system.init(jax.random.PRNGKey(0))
    local = lambda tree: jax.tree.map(
        lambda x: np.asarray(x.addressable_data(0)), tree)
    saved = {}
    system.start(state)
    try:
      for update in range(3):
        state, metrics = system.step(state)
        leaves = jax.tree.leaves(local(state.params))
        digest = hashlib.sha256(b"".join(x.tobytes() for x in leaves))
        print("UPDATE", update, digest.hexdigest(), flush=True)
        if update == 0:
          saved["params1"] = local(state.params)
          saved["opt1"] = local(state.opt_state)
        if update == 1:
          saved["params2"] = local(state.params)
          saved["loss2"] = float(metrics["loss/total"])
    finally:
      system.stop()
    saved["unroll1"] = unrolls[1]
    with open(f"{out}/process{process_id}.pkl", "wb") as f:
      pickle.dump(saved, f)
    jax.distributed.shutdown()
""")


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.timeout(400)
def test_two_processes_make_identical_updates(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(  # one CPU device per process
      f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
  port = str(free_port())
  processes = [subprocess.Popen(
      [sys.executable, "-c", WORKER, str(i), port, str(tmp_path)], cwd=ROOT,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  outputs = []
  try:
    for process in processes:
      stdout, stderr = process.communicate(timeout=360)
      assert process.returncode == 0, stderr[-3000:]
      outputs.append([l for l in stdout.splitlines()
                      if l.startswith("UPDATE")])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  assert len(outputs[0]) == 3 and outputs[0] == outputs[1], outputs

  # The second update equals one on a single device over both unrolls.
  # pylint: disable=g-import-not-at-top
  from experiments.configs import sebulba as configs
  from rtrl_jax.rl import sebulba
  # pylint: enable=g-import-not-at-top
  saved = []
  for i in range(2):
    with open(tmp_path / f"process{i}.pkl", "rb") as f:
      saved.append(pickle.load(f))
  config = configs.tiny()
  config.sebulba.num_envs_per_thread = 8
  system = sebulba.make_system(config)
  unrolls = [s["unroll1"] for s in saved]
  assert not any(u.reset[0].all() for u in unrolls)   # mid-episode starts
  batch = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0),
                       *[u.initial_state for u in unrolls])
  rest = [jax.tree.map(lambda *xs: np.concatenate(xs, axis=1),
                       *[getattr(u, f) for u in unrolls])
          for f in unrolls[0]._fields[1:]]
  batch = type(unrolls[0])(batch, *rest)
  params, _, metrics = jax.jit(system.learner.step)(
      saved[0]["params1"], saved[0]["opt1"], batch)
  for a, b in zip(jax.tree.leaves(jax.device_get(params)),
                  jax.tree.leaves(saved[0]["params2"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["loss/total"]), saved[0]["loss2"],
                             rtol=1e-5)


@pytest.mark.timeout(400)
def test_sigterm_to_one_process_stops_both_at_one_checkpoint(tmp_path):
  """SLURM signals each task on its own: the process that did not get
  SIGTERM must stop at the same update, or the checkpoint's collective save
  and its next learner step wait for each other forever."""
  # pylint: disable=g-import-not-at-top
  from run_helpers import checkpoint_steps, strict_json_loads
  # pylint: enable=g-import-not-at-top
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(
      f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
  port, workdir = str(free_port()), str(tmp_path / "run")
  flags = ["--config=experiments/configs/sebulba.py:tiny",
           "--config.total_updates=100000", "--config.run.checkpoint_every=5",
           "--config.run.progress=false", f"--workdir={workdir}",
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  processes = [subprocess.Popen(
      [sys.executable, "-m", "experiments.r2ac_sebulba", *flags,
       f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    deadline = time.time() + 240
    while not checkpoint_steps(workdir):
      for process in processes:
        assert process.poll() is None, process.communicate()[1][-3000:]
      assert time.time() < deadline, "no checkpoint in time"
      time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)
    results = []
    for process in processes:
      stdout, stderr = process.communicate(timeout=90)
      assert process.returncode == 0, stderr[-3000:]
      results.append(strict_json_loads(stdout.strip().splitlines()[-1]))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  assert [r["status"] for r in results] == ["preempted", "preempted"]
  assert results[0]["update"] == results[1]["update"]
  assert results[0]["update"] in checkpoint_steps(workdir)
