"""Reusable pieces of an experiment script: config checks, logging, checkpoints,
the training loop (progress bar, SIGTERM/SIGINT, non-finite or diverging
losses) and run folders.

A script (see experiments/copy_task.py) builds a pure, jitted
`train_step(state) -> (state, metrics)` and hands it to `train_loop`.
"""

from rtrl_jax.experiment import cli
from rtrl_jax.experiment import config
from rtrl_jax.experiment import preemption
from rtrl_jax.experiment.checkpoint import Checkpointer
from rtrl_jax.experiment.config import ConfigError, check_config
from rtrl_jax.experiment.loop import (DivergenceError, LoopOptions, LoopResult,
                                      NonFiniteLossError,
                                      train_loop)
from rtrl_jax.experiment.run_logger import RunLogger, json_safe, read_jsonl
from rtrl_jax.experiment.workdir import finished_results, prepare_workdir

__all__ = ["Checkpointer", "cli", "config", "ConfigError", "DivergenceError",
           "LoopOptions", "LoopResult", "NonFiniteLossError", "preemption",
           "RunLogger", "check_config", "finished_results", "json_safe", "prepare_workdir",
           "read_jsonl",
           "train_loop"]
