"""Observation encoders (flax.linen) and the feed-forward pseudo-cell.

The R2AC network is encoder → recurrent core → policy and value heads. The
encoders here are ordinary flax modules; the core is any cell of the cell
protocol (`rtrl_jax.cells.base`), run by `rtrl` or `bptt`.
"""

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rtrl_jax.cells.base import ElementwiseCell


class MLPEncoder(nn.Module):
  """Flattened observation → ReLU MLP. For vector (and small grid) inputs."""

  sizes: Sequence[int] = (64, 64)
  obs_scale: float = 1.0

  @nn.compact
  def __call__(self, obs):
    x = obs.reshape((obs.shape[0], -1)).astype(jnp.float32) * self.obs_scale
    for size in self.sizes:
      x = nn.relu(nn.Dense(size)(x))
    return x


class ResidualBlock(nn.Module):
  channels: int

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.channels, (3, 3))(nn.relu(x))
    y = nn.Conv(self.channels, (3, 3))(nn.relu(y))
    return x + y


class ImpalaEncoder(nn.Module):
  """IMPALA "deep" ResNet stem (Espeholt et al. 2018), as in the paper's code.

  Per stage: conv3x3 → maxpool 3x3 stride 2 → 2 residual blocks; then ReLU,
  flatten, Dense(feature_size), ReLU. Input [B, H, W, C] uint8 pixels.
  """

  channels: Sequence[int] = (16, 32, 32)
  feature_size: int = 256

  @nn.compact
  def __call__(self, obs):
    x = obs.astype(jnp.float32) / 255.0
    for channels in self.channels:
      x = nn.Conv(channels, (3, 3))(x)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
      x = ResidualBlock(channels)(x)
      x = ResidualBlock(channels)(x)
    x = nn.relu(x).reshape((x.shape[0], -1))
    return nn.relu(nn.Dense(self.feature_size)(x))


@dataclasses.dataclass(frozen=True)
class FeedForward(ElementwiseCell):
  """A memoryless "core": y = ReLU(W x + b), with an empty recurrent state.

  It follows the cell protocol so that the agent runs every core the same
  way; with no recurrent parameters, `rtrl` and `bptt` coincide.
  """

  hidden_size: int

  def init(self, key, input_size, dtype=jnp.float32):
    w = jax.nn.initializers.lecun_normal()(key, (self.hidden_size, input_size),
                                           dtype)
    return {"recurrent": {},
            "readout": {"W": w, "b": jnp.zeros((self.hidden_size,), dtype)}}

  def input_size(self, params):
    return params["readout"]["W"].shape[1]

  def initial_hidden(self, params):
    return jnp.zeros((0,), params["readout"]["W"].dtype)

  def transition(self, recurrent_params, hidden, inputs):
    return hidden

  def update_sensitivities(self, recurrent_params, hidden, inputs,
                           sensitivities):
    return sensitivities

  def readout(self, readout_params, hidden, inputs):
    return jax.nn.relu(readout_params["W"] @ inputs + readout_params["b"])
