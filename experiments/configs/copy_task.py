"""Configs for experiments/copy_task.py.

  --config=experiments/configs/copy_task.py          = :cpu (the default)
  --config=experiments/configs/copy_task.py:cpu      what docs/COPY_TASK.md ran
  --config=experiments/configs/copy_task.py:gpu      the paper (= :paper; GPU, untested)
  --config=experiments/configs/copy_task.py:tiny     seconds; tests and CI

Override any field on the command line, e.g. `--config.train.mode=bptt
--config.model.hidden_size=256`. `train.mode` is rtrl | tbptt | bptt;
`train.segment_length` is k (rtrl) or the truncation M (tbptt) and must divide
2·data.max_length; `train.update_every` is segment (an optimizer step after every
segment: fully online for rtrl) or sequence (one step per batch).
"""

import ml_collections


def paper():
  """Paper hyper-parameters (paper-notes §4.4, §5.4): length 2·500 = 1000."""
  config = ml_collections.ConfigDict()
  config.seed = 1
  config.data = ml_collections.ConfigDict(dict(
      max_length=500,       # T_max; sequences are 2·T_max steps long
      seed=42,              # the fixed validation and test sets
      valid_size=1000,
      test_size=1000,
      eval_batch_size=250,
  ))
  config.model = ml_collections.ConfigDict(dict(
      cell="elstm",
      hidden_size=2048,
      init_scale=0.1,
      forget_bias=0.0,
  ))
  config.train = ml_collections.ConfigDict(dict(
      mode="rtrl",
      segment_length=1,     # rtrl: update every k steps; tbptt: truncation M
      update_every="segment",  # segment | sequence
      batch_size=128,
      num_steps=40_000,     # ≈ 500 epochs of 10k sequences at batch 128
      learning_rate=3e-5,
      b1=0.9,
      b2=0.995,
      eps=1e-9,
      clip_norm=1.0,
      stop_accuracy=1.0,    # stop at this validation accuracy (> 1: never)
  ))
  config.run = ml_collections.ConfigDict(dict(
      log_every=50,
      eval_every=500,
      checkpoint_every=1000,
      max_checkpoints=2,
      progress=True,
      wandb=False,          # also log to wandb (if it is installed)
  ))
  return config


def cpu():
  """A 2-core CPU: length 2·8 = 16, N = 256 (what docs/COPY_TASK.md ran).

  Fully online RTRL (k = 1, 16 updates per sequence) by default; the BPTT and
  TBPTT runs in the docs use update_every=sequence and learning_rate=3e-3.
  """
  config = paper()
  config.data.max_length = 8
  config.data.eval_batch_size = 500
  config.model.hidden_size = 256
  config.train.segment_length = 1
  config.train.batch_size = 64
  config.train.num_steps = 10_000
  config.train.learning_rate = 3e-4
  config.run.log_every = 50
  config.run.eval_every = 200
  config.run.checkpoint_every = 1000
  return config


def tiny():
  """Seconds on a CPU, for tests and CI."""
  config = paper()
  config.data.max_length = 4
  config.data.valid_size = 64
  config.data.test_size = 64
  config.data.eval_batch_size = 32
  config.model.hidden_size = 16
  config.train.segment_length = 2
  config.train.batch_size = 8
  config.train.num_steps = 200
  config.train.learning_rate = 1e-2
  config.train.stop_accuracy = 2.0
  config.run.log_every = 10
  config.run.eval_every = 50
  config.run.checkpoint_every = 20
  config.run.progress = False
  return config


CONFIGS = {"paper": paper, "gpu": paper, "cpu": cpu, "tiny": tiny}

# What `--resume` may change (see rtrl_jax.experiment.prepare_workdir):
# logging, evaluation and checkpoint cadence do not change what is trained;
# train.num_steps may grow (the learning rate is constant, so there is no
# schedule whose horizon would move).
RESUME_MAY_CHANGE = ("run.progress", "run.log_every", "run.eval_every",
                     "run.checkpoint_every", "run.max_checkpoints",
                     "run.wandb")
RESUME_MAY_EXTEND = ("train.num_steps",)


def get_config(name="cpu"):
  if name not in CONFIGS:
    raise ValueError(f"unknown config preset {name!r}; the presets are "
                     f"{', '.join(sorted(CONFIGS))}")
  return CONFIGS[name]()
