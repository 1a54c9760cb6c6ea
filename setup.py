"""rtrl_jax: exact Real-Time Recurrent Learning (RTRL) for element-wise RNNs in JAX."""

from setuptools import find_packages, setup

# Pinned to versions that install together on Python 3.11 (jax 0.11+ and
# envpool 1.2.6+ need Python 3.12); see the README.
CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "numpy==2.4.6",
    "chex==0.1.92",
    "optax==0.2.8",
    "flax==0.12.8",
    "dm-haiku==0.0.17",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "orbax-checkpoint==0.12.8",
    "tensorboardX==2.6.5",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    # R2AC: V-trace (rlax needs distrax, which needs a tfp nightly: pinned so
    # the resolution cannot drift) and the JAX environments of the Anakin system.
    "rlax==0.1.9",
    "distrax==0.1.9",
    "tfp-nightly==0.26.0.dev20261027",
    "gymnax==1.0.1",
    "gymnasium==1.3.0",
    "xminigrid==0.9.3",
]

EXTRAS = {
    # Non-JAX environments for the Sebulba system (about 1 GB of wheels).
    "envs": [
        "envpool==1.2.5",
    ],
    "test": [
        "pytest==9.2.0",
        "pytest-timeout==2.4.0",
        "pytest-xdist==3.8.0",
    ],
}

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
