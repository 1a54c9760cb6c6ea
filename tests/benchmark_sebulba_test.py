"""experiments/benchmark_sebulba.py: smoke runs of its --quick modes.

Timings are not checked (noise at these sizes); the tests check that each
mode measures what it says (both systems, each device count), that the ratio
column is Sebulba over envpool alone, and that the CSV and plot are written.
"""

import csv
import math
import subprocess
import sys
import textwrap

import pytest

from run_helpers import ROOT, script_environment

TIMEOUT = 300


def run_benchmark(*flags, devices=2):
  environment = script_environment()
  environment["XLA_FLAGS"] = (
      f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run(
      [sys.executable, "-m", "experiments.benchmark_sebulba", *flags],
      cwd=ROOT, env=environment, capture_output=True, text=True,
      timeout=TIMEOUT)


def read_rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_quick_throughput_writes_csv_and_plot(tmp_path):
  result = run_benchmark("--quick", "--mode=throughput", f"--out_dir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  name = "sebulba_throughput_MiniGrid-MemoryS7-v0_4envs_1groups_rtrl"
  (row,) = read_rows(tmp_path / f"{name}.csv")
  assert (row["threads"], row["envs_per_thread"]) == ("1", "4")
  envpool, sebulba = float(row["envpool_sps"]), float(row["sebulba_sps"])
  assert envpool > 0 and sebulba > 0
  assert math.isclose(float(row["ratio"]), sebulba / envpool, abs_tol=1e-3)
  assert row["rounds"] == "2"
  assert float(row["ratio_min"]) <= float(row["ratio_max"])
  assert 0 < float(row["cpu_ceiling_ratio"]) <= 1
  # One env group: envpool's cycle alone and one policy call alone, in turn.
  env_cycle = 4 / envpool
  policy_call = float(row["policy_call_ms"]) / 1e3
  assert policy_call > 0
  assert math.isclose(float(row["serial_ceiling_ratio"]),
                      env_cycle / (env_cycle + policy_call), abs_tol=2e-3)
  for cost in ("envpool", "policy", "policy_without_sensitivities", "learner"):
    assert float(row[f"{cost}_cpu_us_per_step"]) > 0, cost
  assert float(row["updates_per_s"]) > 0
  # Every actor and learner phase was timed.
  for phase in ("actor/inference", "actor/env_recv", "actor/transfer",
                "learner/step", "learner/queue_get"):
    assert float(row[f"time/{phase}"]) > 0, phase
  assert (tmp_path / f"{name}.png").stat().st_size > 0
  assert "| MiniGrid-MemoryS7-v0 | 1 | 4 |" in result.stdout


def test_quick_learner_measures_each_device_count(tmp_path):
  result = run_benchmark("--quick", "--mode=learner", f"--out_dir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_rows(tmp_path / "sebulba_learner_8envs.csv")
  assert [r["devices"] for r in rows] == ["1", "2"]
  for r in rows:
    assert math.isclose(float(r["updates_per_s"]),
                        1 / float(r["median_step_s"]), rel_tol=0.01)
  assert (tmp_path / "sebulba_learner_8envs.png").stat().st_size > 0


def test_bad_flags_are_one_line_errors(tmp_path):
  for flags, message in (
      (["--threads=1,x"], "error: --threads: 'x' is not a positive int"),
      (["--mode=learner", "--devices=1,4"],
       "error: --devices: [4] above the 2 devices here"),
      (["--mode=learner", "--devices=1,2", "--learner_envs=3"],
       "error: --learner_envs=3 must be a multiple of each --devices count; "
       "not of [2]"),
      (["--config.unroll_length=0"], "error: config.unroll_length: "),
      (["--threads="], "error: --threads: give at least one value"),
      (["--quick", "--threads=2"],
       "error: --quick sets --threads itself; give either --quick or them"),
      (["--out_dir=/dev/null/x"], "error: [Errno 20] Not a directory"),
      (["--config.env.name=MiniGrid-Nope-v0"],
       "error: env.name='MiniGrid-Nope-v0' is not an envpool environment id")):
    if not any(flag.startswith("--out_dir") for flag in flags):
      flags = [*flags, f"--out_dir={tmp_path}"]
    result = run_benchmark(*flags)
    assert result.returncode == 1, flags
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), (flags, lines)
  assert not list(tmp_path.iterdir())



# In its own process: the script's absl flags must not meet another
# script's in this test process.
ENVPOOL_ALONE_WITH_A_BROKEN_THREAD = textwrap.dedent("""
    import sys
    import numpy as np
    from experiments import benchmark_sebulba

    class FakeEnv:
      # Answers every send at once with the sent group's env_ids.
      def __init__(self, num_envs, batch_size):
        self.num_envs, self.batch_size, self.pending = num_envs, batch_size, []
      def async_reset(self):
        self.pending = [np.arange(start, start + self.batch_size)
                        for start in range(0, self.num_envs, self.batch_size)]
      def recv(self):
        env_ids = self.pending.pop(0)
        zeros = np.zeros(len(env_ids), np.float32)
        return zeros, zeros, zeros.astype(bool), {"env_id": env_ids}
      def send(self, action, env_ids):
        self.pending.append(np.asarray(env_ids))
      def close(self):
        pass

    class Suite:
      # The second thread's envpool fails to start.
      num_actions = 3
      def make(self, num_envs, seed, batch_size=None):
        if seed == 1:
          raise OSError("no envpool for seed 1")
        return FakeEnv(num_envs, batch_size or num_envs)

    threads = int(sys.argv[1])
    try:
      sps, cpu = benchmark_sebulba.envpool_alone(
          Suite(), threads, envs_per_thread=4, groups=2, seconds=0.2)
      print("MEASURED", sps > 0 and cpu > 0)
    except RuntimeError as error:
      print("RAISED", error, "|", error.__cause__)
""")


@pytest.mark.parametrize("threads,expected", [
    (1, "MEASURED True"),   # control: the fake suite itself works
    (2, "RAISED envpool alone: a stepping thread failed | no envpool for "
        "seed 1")])
def test_envpool_alone_raises_a_stepping_threads_error_instead_of_hanging(
    threads, expected):
  result = subprocess.run(
      [sys.executable, "-c", ENVPOOL_ALONE_WITH_A_BROKEN_THREAD, str(threads)],
      cwd=ROOT, env=script_environment(), capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == expected


def test_serial_ceiling_adds_one_policy_call_to_envpools_cycle():
  # 8 envs at 1000 steps/s alone: an 8 ms cycle per thread, so an 8 ms
  # policy call halves it, for 1 thread or 2 (each its own cycle). With 2
  # env groups envpool and the policy overlap: no bound below envpool alone.
  code = textwrap.dedent("""
      from experiments.benchmark_sebulba import serial_ceiling
      print(serial_ceiling(1000.0, 1, 8, 1, 0.008),
            serial_ceiling(2000.0, 2, 8, 1, 0.008),
            serial_ceiling(1000.0, 1, 8, 1, 0.024),
            serial_ceiling(1000.0, 1, 8, 2, 0.008))
  """)
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          env=script_environment(), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  values = [float(v) for v in result.stdout.split()]
  assert values == pytest.approx([500.0, 1000.0, 250.0, 1000.0])
