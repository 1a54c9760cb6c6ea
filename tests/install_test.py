"""The library installs as a wheel with only its core requirements, and the
README's Python example runs there.

Builds the wheel from a copy of setup.py and rtrl_jax/, installs it into a
fresh virtualenv with `pip install -c constraints.txt <wheel>` (so only
`install_requires` comes along, at the versions `make` installs), checks that
no optional dependency was installed or imported, and runs the README's first
```python block plus one call of its train_step. About 40 s (pip's
find-links/index as configured on the machine; CI's is the same).
"""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Optional dependencies (setup.py's extras): none may come with the core.
OPTIONAL = ["flax", "dm-haiku", "rlax", "distrax", "tfp-nightly", "gymnax",
            "xminigrid", "orbax-checkpoint", "matplotlib", "tensorboardX",
            "ml-collections", "envpool", "tqdm", "gymnasium"]
OPTIONAL_MODULES = ["flax", "haiku", "rlax", "distrax",
                    "tensorflow_probability", "gymnax", "xminigrid", "orbax",
                    "matplotlib", "tensorboardX", "ml_collections", "envpool",
                    "tqdm"]


def readme_example():
  with open(os.path.join(REPO, "README.md")) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
  assert blocks, "README.md has no ```python block"
  return blocks[0]


def _run(command, **kwargs):
  result = subprocess.run(command, capture_output=True, text=True, **kwargs)
  assert result.returncode == 0, (command, result.stdout[-3000:],
                                  result.stderr[-3000:])
  return result


def test_setup_has_ranges_not_pins():
  with open(os.path.join(REPO, "setup.py")) as f:
    text = f.read()
  assert "==" not in text.replace('"=="', ""), "setup.py pins with =="
  with open(os.path.join(REPO, "constraints.txt")) as f:
    pins = [line for line in f if line.strip() and not line.startswith("#")]
  assert pins and all("==" in line for line in pins)
  names = {line.split("==")[0].lower().replace("_", "-") for line in pins}
  for name in ["jax", "jaxlib", "numpy", "optax", "flax", "rlax",
               "tfp-nightly", "envpool", "pytest", "tensorboard",
               "tensorboardx", "orbax-checkpoint"]:
    assert name in names, f"constraints.txt does not pin {name}"
  with open(os.path.join(REPO, "Makefile")) as f:
    assert "-c constraints.txt" in f.read()


@pytest.mark.timeout(600)
def test_wheel_installs_with_core_requirements_and_runs_readme_example(
    tmp_path):
  source = tmp_path / "source"
  source.mkdir()
  shutil.copy(os.path.join(REPO, "setup.py"), source)
  shutil.copytree(os.path.join(REPO, "rtrl_jax"), source / "rtrl_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
        str(tmp_path / "dist"), str(source)])
  (wheel,) = list((tmp_path / "dist").glob("rtrl_jax-*.whl"))
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", str(venv)])
  python = str(venv / "bin" / "python")
  _run([python, "-m", "pip", "install", "-q", "-c",
        os.path.join(REPO, "constraints.txt"), str(wheel)])
  installed = _run([python, "-m", "pip", "list", "--format=freeze"]).stdout
  names = {line.split("==")[0].lower().replace("_", "-")
           for line in installed.splitlines()}
  assert {"rtrl-jax", "jax", "jaxlib", "numpy", "optax"} <= names
  assert not names & {n.lower() for n in OPTIONAL}, installed

  script = readme_example() + textwrap.dedent(f"""
      import sys
      key = jax.random.PRNGKey(1)
      inputs = jax.random.normal(key, (4, 32, 16))
      resets = jnp.zeros((4, 32), bool)
      targets = jnp.zeros((4, 32, 128))
      params, opt_state, state = train_step(params, opt_state, state, inputs,
                                            resets, targets)
      assert all(bool(jnp.all(jnp.isfinite(x)))
                 for x in jax.tree.leaves(params))
      import rtrl_jax.oracle, rtrl_jax.diagnostics, rtrl_jax.tasks.copy_task
      import rtrl_jax.cells.multilayer
      assert rtrl_jax.__file__.startswith({str(venv)!r}), rtrl_jax.__file__
      loaded = [m for m in {OPTIONAL_MODULES!r} if m in sys.modules]
      assert not loaded, loaded
      print("README example ran")
  """)
  # Outside the repository, so the installed package is the one imported.
  result = _run([python, "-c", script], cwd=str(tmp_path),
                env={**os.environ, "JAX_PLATFORMS": "cpu",
                     "PYTHONPATH": ""})
  assert "README example ran" in result.stdout
