"""Copy-task objects from a copy-task config: the one place it is unpacked.

The functions of `rtrl_jax.tasks.copy_task` take explicit arguments (a cell,
an optax optimizer, a `copy_task.Training`); the scripts' config
(experiments/configs/copy_task.py, also the config.json of a run folder) is
read here and nowhere else.
"""

import rtrl_jax
from rtrl_jax.tasks import copy_task


def cell(config):
  """The recurrent cell of `config.model` (e.g. an eLSTM)."""
  model = config.model
  return rtrl_jax.CELLS[model.cell](hidden_size=model.hidden_size,
                                    init_scale=model.init_scale,
                                    forget_bias=model.forget_bias)


def optimizer(config):
  train = config.train
  return copy_task.make_optimizer(train.learning_rate, train.clip_norm,
                                  train.b1, train.b2, train.eps)


def training(config) -> copy_task.Training:
  train = config.train
  return copy_task.Training(
      mode=train.mode, segment_length=train.segment_length,
      update_every=train.update_every, batch_size=train.batch_size,
      max_length=config.data.max_length)


def init_train_state(config) -> copy_task.TrainState:
  return copy_task.init_train_state(cell(config), optimizer(config),
                                    config.seed)


def train_step(config):
  return copy_task.make_train_step(cell(config), optimizer(config),
                                   training(config))


def sequence_gradient(config):
  return copy_task.make_sequence_gradient(cell(config), training(config))


def evaluate(config):
  return copy_task.make_evaluate(cell(config), config.data.eval_batch_size)


def sequences_right(config):
  return copy_task.make_sequences_right(cell(config))


def evaluation_sets(config):
  """(validation set, test set) of `config.data`."""
  data = config.data
  return copy_task.evaluation_sets(data.seed, data.valid_size, data.test_size,
                                   data.max_length)


def describe_training(train_config):
  """`copy_task.describe_training` of a config's `train` (also a plain dict,
  as read from a run folder's config.json)."""
  return copy_task.describe_training(train_config["mode"],
                                     train_config["segment_length"],
                                     train_config["update_every"])
