"""launch/ scripts: each dry-run prints the commands it would run."""

import os
import re
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")


def dry_run(script, *args, env=None):
  result = subprocess.run(["bash", os.path.join(LAUNCH, script), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, **(env or {})))
  assert result.returncode == 0, result.stderr
  return result.stdout.strip().splitlines()


@pytest.mark.timeout(60)
def test_local_one_process():
  lines = dry_run("local.sh", "--dry-run", "--",
                  "--config=experiments/configs/sebulba.py:tiny")
  assert len(lines) == 1
  assert lines[0].endswith("-m experiments.r2ac_sebulba "
                           "--config=experiments/configs/sebulba.py:tiny")


@pytest.mark.timeout(60)
def test_local_processes_and_fake_devices():
  lines = dry_run("local.sh", "--dry-run", "--processes", "2",
                  "--fake-devices", "4", "--port", "4321", "--",
                  "--workdir=runs/x")
  assert len(lines) == 2
  for i, line in enumerate(lines):
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=4" in line
    assert "--workdir=runs/x" in line
    assert ("--coordinator_address=127.0.0.1:4321 --num_processes=2 "
            f"--process_id={i}") in line


@pytest.mark.timeout(60)
def test_slurm():
  lines = dry_run("slurm.sbatch", "--config=c.py:atari", "--resume",
                  env={"DRY_RUN": "1", "DETERMINISTIC": "1"})
  assert "--xla_gpu_deterministic_ops=true" in lines[0]
  assert lines[-1].startswith("srun ")
  assert ("-m experiments.r2ac_sebulba --distributed --config=c.py:atari "
          "--resume") in lines[-1]
  with open(os.path.join(LAUNCH, "slurm.sbatch")) as f:
    header = f.read()
  for directive in ("--ntasks-per-node=1", "--gpus-per-node", "--signal=TERM",
                    "--requeue"):
    assert f"#SBATCH {directive}" in header


@pytest.mark.timeout(60)
def test_tpu_pod():
  lines = dry_run("tpu_pod.sh", "--dry-run", "--setup", "--tpu", "pod",
                  "--zone", "us-central2-b", "--project", "p", "--",
                  "--workdir=gs://bucket/run")
  assert len(lines) == 2
  remote = []
  for line in lines:
    *ssh, command = shlex.split(line)
    assert ssh == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod",
                   "--zone=us-central2-b", "--project=p", "--worker=all"]
    assert command.startswith("--command=")
    remote.append(command[len("--command="):])
  assert "pip install" in remote[0] and "'jax[tpu]'" in remote[0]
  assert remote[1].endswith("-m experiments.r2ac_sebulba --distributed "
                            "--workdir=gs://bucket/run")


# Flags a shell would re-read wrongly if they were pasted in unquoted.
TRICKY = ["--config=c.py:tiny", "--config.network.core_kwargs={'elstm':{'x':2}}",
          "--workdir=/tmp/a b", "--config.sebulba.queue_size=(1)"]


@pytest.mark.timeout(60)
def test_launch_scripts_forward_flags_exactly():
  (local,) = dry_run("local.sh", "--dry-run", "--", *TRICKY,
                     env={"PYTHON": "py"})
  assert shlex.split(local) == ["py", "-m", "experiments.r2ac_sebulba",
                                *TRICKY]
  srun = dry_run("slurm.sbatch", *TRICKY, env={"DRY_RUN": "1",
                                                "PYTHON": "py"})[-1]
  assert shlex.split(srun)[-len(TRICKY) - 1:] == ["--distributed", *TRICKY]
  (train,) = dry_run("tpu_pod.sh", "--dry-run", "--tpu", "pod", "--zone", "z",
                     "--", *TRICKY)
  remote = shlex.split(train)[-1][len("--command="):]
  # The worker's shell reads the command once more.
  assert shlex.split(remote)[-len(TRICKY) - 1:] == ["--distributed", *TRICKY]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script, args", [
    ("local.sh", ["--processes"]), ("local.sh", ["--port", ""]),
    ("tpu_pod.sh", ["--tpu", "pod", "--zone"])])
def test_launch_flags_without_a_value_are_one_line_errors(script, args):
  result = subprocess.run(["bash", os.path.join(LAUNCH, script), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
  assert result.returncode == 2
  assert result.stderr.strip() == f"{script}: {args[-1] or args[-2]} needs a value"


@pytest.mark.timeout(60)
def test_tpu_pod_needs_a_name_and_zone():
  result = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_pod.sh"),
                           "--dry-run"], capture_output=True, text=True,
                          timeout=30)
  assert result.returncode == 2
  assert "--tpu and --zone are required" in result.stderr


@pytest.mark.timeout(60)
def test_accelerator_benchmarks_fetch_pins_python312_wheels():
  (line,) = dry_run("accelerator_benchmarks.sh", "fetch", "--dry-run",
                    env={"PYTHON": "py"})
  assert line.startswith("py -m pip download ")
  assert "--python-version 3.12" in line and "-d .whl" in line
  for pin in ("ml-collections==1.1.0", "rlax==0.1.9", "gymnax==1.0.1",
              "tfp-nightly==0.26.0.dev20261027"):
    assert pin in line


@pytest.mark.timeout(60)
def test_accelerator_benchmarks_fetch_pins_agree_with_setup_py():
  (line,) = dry_run("accelerator_benchmarks.sh", "fetch", "--dry-run")
  fetched = dict(pin.split("==") for pin in line.split() if "==" in pin)
  with open(os.path.join(ROOT, "setup.py")) as f:
    pinned = dict(re.findall(r'"([\w.-]+)==([^"]+)"', f.read()))
  normal = lambda name: re.sub(r"[-_.]+", "-", name).lower()
  pinned = {normal(name): version for name, version in pinned.items()}
  shared = [name for name in fetched if normal(name) in pinned]
  assert len(shared) >= 7
  for name in shared:
    assert fetched[name] == pinned[normal(name)], name


@pytest.mark.timeout(60)
def test_accelerator_benchmarks_run_installs_then_benchmarks():
  lines = dry_run("accelerator_benchmarks.sh", "run", "--dry-run",
                  "--out", "/tmp/o", env={"PYTHON": "py"})
  assert lines[0].startswith("py -m pip install --quiet --no-index --no-deps")
  assert lines[0].endswith("--target /tmp/site .whl/*.whl")
  runs = [l for l in lines if "experiments.benchmark_anakin" in l]
  assert [r.split("--num_envs=")[1].split()[0] for r in runs] == ["64", "1024"]
  for r in runs:
    assert r.startswith("PYTHONPATH=/tmp/site:")
    assert "--hidden=64,256,512 --encoder_features=32,32,256" in r
  assert runs[1].endswith("--out_dir=/tmp/o/b1024")
  quick = dry_run("accelerator_benchmarks.sh", "run", "--dry-run", "--quick",
                  "--out", "/tmp/o", env={"PYTHON": "py"})
  assert quick[-1].endswith("-m experiments.benchmark_anakin --quick "
                            "--out_dir=/tmp/o/quick")


@pytest.mark.timeout(60)
def test_accelerator_benchmarks_rejects_bad_arguments():
  for args in (["bogus"], ["run", "--fast"], ["run", "--out"]):
    result = subprocess.run(
        ["bash", os.path.join(LAUNCH, "accelerator_benchmarks.sh"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert args[-1] in result.stderr
