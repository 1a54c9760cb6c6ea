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


def slurm_srun(lines):
  (srun,) = [line for line in lines if line.startswith("srun ")]
  return srun


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
def test_local_without_forwarded_flags_adds_no_empty_argument():
  (local,) = dry_run("local.sh", "--dry-run", env={"PYTHON": "py"})
  assert local == "py -m experiments.r2ac_sebulba"
  (train,) = dry_run("tpu_pod.sh", "--dry-run", "--tpu", "pod", "--zone", "z")
  remote = shlex.split(train)[-1][len("--command="):]
  assert remote.endswith("-m experiments.r2ac_sebulba --distributed")
  assert shlex.split(remote)[-1] == "--distributed"
  srun = slurm_srun(dry_run("slurm.sbatch", env={"DRY_RUN": "1"}))
  assert shlex.split(srun)[-1] == "--distributed"


@pytest.mark.timeout(60)
def test_slurm():
  lines = dry_run("slurm.sbatch", "--config=c.py:atari", "--resume",
                  env={"DRY_RUN": "1", "DETERMINISTIC": "1",
                       "SLURM_JOB_ID": "123"})
  assert "--xla_gpu_deterministic_ops=true" in lines[0]
  assert slurm_srun(lines).endswith(
      "-m experiments.r2ac_sebulba --distributed --config=c.py:atari "
      "--resume")
  # A preempted run (SIGTERM before the time limit) requeues the job.
  assert lines[-1].startswith("# then, if it printed \"status\": "
                              "\"preempted\": ")
  assert lines[-1].endswith(": scontrol requeue 123")
  with open(os.path.join(LAUNCH, "slurm.sbatch")) as f:
    header = f.read()
  for directive in ("--ntasks-per-node=1", "--gpus-per-node", "--signal=TERM",
                    "--requeue", "--output=slurm-%j.out"):
    assert f"#SBATCH {directive}" in header


@pytest.mark.timeout(60)
def test_slurm_requeued_job_resumes():
  env = {"DRY_RUN": "1", "SLURM_RESTART_COUNT": "1", "PYTHON": "py"}
  srun = slurm_srun(dry_run("slurm.sbatch", "--workdir=w", env=env))
  assert shlex.split(srun)[-3:] == ["--distributed", "--workdir=w", "--resume"]
  srun = slurm_srun(dry_run("slurm.sbatch", "--resume", "--workdir=w",
                            env=env))
  assert shlex.split(srun)[-3:] == ["--distributed", "--resume", "--workdir=w"]
  env["SLURM_RESTART_COUNT"] = "0"
  srun = slurm_srun(dry_run("slurm.sbatch", "--workdir=w", env=env))
  assert "--resume" not in shlex.split(srun)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("run_status, exit_status, requeued", [
    ("preempted", 0, True), ("finished", 0, False), ("preempted", 1, False)])
def test_slurm_requeues_a_preempted_run(tmp_path, run_status, exit_status,
                                        requeued):
  """The script itself, with stand-ins for srun and scontrol on PATH."""
  calls = tmp_path / "calls"
  for name, body in (
      ("srun", f"echo \"srun $*\" >> {calls}\n"
               f"echo '{{\"status\": \"{run_status}\", \"update\": 7}}'\n"
               f"exit {exit_status}"),
      ("scontrol", f"echo \"scontrol $*\" >> {calls}")):
    (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
    (tmp_path / name).chmod(0o755)
  result = subprocess.run(
      ["bash", os.path.join(LAUNCH, "slurm.sbatch"), "--workdir=w"],
      cwd=ROOT, capture_output=True, text=True, timeout=30,
      env=dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}",
               SLURM_JOB_ID="123", SLURM_SUBMIT_DIR=ROOT, PYTHON="py"))
  assert result.returncode == exit_status, result.stderr
  assert f'"status": "{run_status}"' in result.stdout   # still in the log
  lines = calls.read_text().splitlines()
  assert lines[0].endswith("-m experiments.r2ac_sebulba --distributed "
                           "--workdir=w")
  assert lines[1:] == (["scontrol requeue 123"] if requeued else [])


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
  srun = slurm_srun(dry_run("slurm.sbatch", *TRICKY,
                            env={"DRY_RUN": "1", "PYTHON": "py"}))
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
@pytest.mark.parametrize("flag, value", [
    ("--processes", "0"), ("--processes", "-1"), ("--processes", "two"),
    ("--fake-devices", "0"), ("--fake-devices", "1.5"), ("--port", "x"),
    ("--port", "65536")])
def test_local_counts_must_be_positive_integers(flag, value):
  result = subprocess.run(
      ["bash", os.path.join(LAUNCH, "local.sh"), "--dry-run", flag, value],
      cwd=ROOT, capture_output=True, text=True, timeout=30)
  assert result.returncode == 2
  limit = " up to 65535" if flag == "--port" else ""
  assert result.stderr.strip() == (
      f"local.sh: {flag} needs a positive integer{limit}, got '{value}'")
  assert not result.stdout


@pytest.mark.timeout(60)
def test_tpu_pod_needs_a_name_and_zone():
  result = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_pod.sh"),
                           "--dry-run"], capture_output=True, text=True,
                          timeout=30)
  assert result.returncode == 2
  assert "--tpu and --zone are required" in result.stderr


@pytest.mark.timeout(60)
def test_accelerator_benchmarks_fetch_pins_python312_wheels():
  clear, line = dry_run("accelerator_benchmarks.sh", "fetch", "--dry-run",
                        env={"PYTHON": "py"})
  assert clear == "rm -rf .whl"      # no stale second version of a package
  assert line.startswith("py -m pip download ")
  assert "--python-version 3.12" in line and "-d .whl" in line
  for pin in ("ml-collections==1.1.0", "rlax==0.1.9", "gymnax==1.0.1",
              "tfp-nightly==0.26.0.dev20261027"):
    assert pin in line


@pytest.mark.timeout(60)
def test_accelerator_benchmarks_fetch_pins_agree_with_constraints():
  _, line = dry_run("accelerator_benchmarks.sh", "fetch", "--dry-run")
  fetched = dict(pin.split("==") for pin in line.split() if "==" in pin)
  with open(os.path.join(ROOT, "constraints.txt")) as f:   # make's pins
    pinned = dict(re.findall(r"^([\w.-]+)==(\S+)$", f.read(), re.M))
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
  plans = [l for l in lines if "experiments.plan_scale" in l]
  assert [p.endswith("--memory=compiled") for p in plans] == [False, True]
  assert all("--device=detect --check_csv=/tmp/o/b" in p for p in plans)
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


@pytest.mark.timeout(120)
def test_accelerator_benchmarks_run_keeps_a_log_in_the_out_dir(tmp_path):
  """A rehearsal with a fake python: every command's output lands in
  OUT/log.txt as it comes."""
  wheels = os.path.join(ROOT, ".whl")     # git-ignored; `run` needs it
  made = not os.path.isdir(wheels)
  if made:
    os.mkdir(wheels)
  fake = tmp_path / "python"
  fake.write_text("#!/usr/bin/env bash\necho \"fake python $*\"\n")
  fake.chmod(0o755)
  out = tmp_path / "out"
  try:
    result = subprocess.run(
        ["bash", os.path.join(LAUNCH, "accelerator_benchmarks.sh"), "run",
         "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHON=str(fake)))
  finally:
    if made:
      os.rmdir(wheels)
  assert result.returncode == 0, result.stderr
  log = (out / "log.txt").read_text()
  assert log.count("+ ") == 4            # install, nvidia-smi, devices, run
  assert "fake python -m experiments.benchmark_anakin --quick" in log
