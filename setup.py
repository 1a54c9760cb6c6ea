"""rtrl_jax: exact Real-Time Recurrent Learning (RTRL) for element-wise RNNs in JAX."""

from setuptools import find_packages, setup

# Version ranges: the lower bounds are the versions the test suite ran with
# (Python 3.11: jax 0.10.2; the core, cell, R2AC and Anakin tests also with
# jax 0.11.2 on Python 3.12); upper bounds only where a break is known. The
# exact set `make test` / `make demo` install is constraints.txt
# (`pip install -c constraints.txt -e ".[envs,tb,test]"`).

# What `import rtrl_jax` (rtrl, bptt, the cells, oracle, multilayer,
# diagnostics, copy_task) needs; optax because the README's example and
# rtrl_jax.tasks.copy_task use it.
CORE = [
    "jax>=0.10.2",
    "jaxlib>=0.10.2",
    "numpy>=2.4.6",
    "optax>=0.2.8",
]

# The experiment scripts (experiments/*.py, rtrl_jax.experiment): configs,
# flags, checkpoints, progress bars, plots.
EXPERIMENTS = [
    "absl-py>=2.5.1",
    "ml-collections>=1.1.0",
    "orbax-checkpoint>=0.12.8",
    "tqdm>=4.70.1",
    "matplotlib>=3.11.2",
    "tensorboardX>=2.6.5",
]

EXTRAS = {
    "experiments": EXPERIMENTS,
    # R2AC (rtrl_jax.rl.agents, anakin, sebulba, evaluation) and its JAX
    # environments: V-trace from rlax, which needs distrax and through it
    # TensorFlow Probability (only a nightly installs with this jax).
    "rl": EXPERIMENTS + [
        "chex>=0.1.92",
        "flax>=0.12.8",
        "rlax>=0.1.9",
        "distrax>=0.1.9",
        "tfp-nightly>=0.26.0.dev20261027",
        "gymnax>=1.0.1",
        "gymnasium>=1.3.0",
        "xminigrid>=0.9.3",
    ],
    # Non-JAX environments for the Sebulba system (about 1 GB of wheels;
    # envpool 1.2.6+ needs Python 3.12).
    "envs": [
        "envpool>=1.2.5",
    ],
    # The TensorBoard viewer for the runs' tensorboard/ folders
    # (`tensorboard --logdir <workdir>/tensorboard`).
    "tb": [
        "tensorboardX>=2.6.5",
        "tensorboard>=2.21.0",
    ],
    # config.run.wandb=true (not tested here: no network to wandb).
    "wandb": [
        "wandb",
    ],
    # rtrl_jax.adapters: flax (in "rl") and haiku.
    "adapters": [
        "flax>=0.12.8",
        "dm-haiku>=0.0.17",
    ],
    "test": [
        "pytest>=9.2.0",
        "pytest-timeout>=2.4.0",
        "pytest-xdist>=3.8.0",
    ],
}
# The test suite needs every part but the optional viewer/wandb.
EXTRAS["test"] = sorted(set(EXTRAS["test"] + EXTRAS["rl"] + EXTRAS["adapters"]))
EXTRAS["all"] = sorted(set(sum((v for k, v in EXTRAS.items() if k != "all"),
                               [])))

setup(
    name="rtrl_jax",
    version="0.1.0",
    description=__doc__,
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["rtrl_jax", "rtrl_jax.*"]),
    install_requires=CORE,
    extras_require=EXTRAS,
)
