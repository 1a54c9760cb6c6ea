"""Forget-gate initialisation: constant bias and chrono (Tallec & Ollivier 2018)."""

import jax
import numpy as np
import pytest
from scipy import stats

import rtrl_jax
from rtrl_jax.cells.lstm import LSTM

# Enough biases for the KS tests below to have power. The LSTM is smaller:
# its orthogonal recurrent init (a QR of a [4N, N] matrix) dominates the time.
N, N_LSTM, D, T_MAX = 4096, 1024, 3, 50.0


def forget_and_input_bias(cell, params):
  """(b_f, b_i or None) of an eLSTM or LSTM parameter tree, as NumPy."""
  if isinstance(cell, LSTM):
    n = cell.hidden_size
    b = np.asarray(params["recurrent"]["b"])
    return b[n:2 * n], b[:n]
  return np.asarray(params["recurrent"]["b_f"]), None


@pytest.mark.parametrize("make", [
    lambda **kw: rtrl_jax.ELSTM(N, **kw), lambda **kw: LSTM(N_LSTM, **kw)])
def test_chrono_bias_is_log_of_uniform_on_1_to_tmax_minus_1(make):
  cell = make(forget_init="chrono", chrono_t_max=T_MAX, forget_bias=7.0)
  b_f, b_i = forget_and_input_bias(cell, cell.init(jax.random.PRNGKey(0), D))
  u = np.exp(b_f)
  assert u.min() >= 1.0 and u.max() <= T_MAX - 1.0
  assert u.min() < 1.1 and u.max() > T_MAX - 1.1    # fills the interval
  # Kolmogorov-Smirnov against U[1, T_max - 1] (a constant, forget_bias
  # leaking in, or another shape fails it) ...
  p_value = stats.kstest(u, stats.uniform(1.0, T_MAX - 2.0).cdf).pvalue
  assert p_value > 1e-3, p_value
  # ... which has the power to reject b_f itself being uniform.
  assert stats.kstest(b_f, stats.uniform(0.0, np.log(T_MAX - 1)).cdf
                      ).pvalue < 1e-3
  if b_i is not None:
    np.testing.assert_array_equal(b_i, -b_f)
  other = make(forget_init="chrono", chrono_t_max=T_MAX)
  b_f_other, _ = forget_and_input_bias(other, other.init(
      jax.random.PRNGKey(1), D))
  assert not np.allclose(b_f, b_f_other)   # drawn from the key


def test_constant_bias_elstm_is_normal_around_forget_bias():
  cell = rtrl_jax.ELSTM(N, init_scale=0.1, forget_bias=3.0)
  b_f, _ = forget_and_input_bias(cell, cell.init(jax.random.PRNGKey(0), D))
  p_value = stats.kstest(b_f, stats.norm(3.0, 0.1).cdf).pvalue
  assert p_value > 1e-3, p_value
  assert stats.kstest(b_f, stats.norm(0.0, 0.1).cdf).pvalue < 1e-3


def test_constant_bias_lstm_sets_only_the_forget_gate():
  cell = LSTM(N_LSTM, forget_bias=2.5)
  b = np.asarray(cell.init(jax.random.PRNGKey(0), D)["recurrent"]["b"])
  np.testing.assert_array_equal(b[N_LSTM:2 * N_LSTM], 2.5)
  np.testing.assert_array_equal(np.delete(b, np.s_[N_LSTM:2 * N_LSTM]), 0.0)


@pytest.mark.parametrize("make", [rtrl_jax.ELSTM, LSTM])
@pytest.mark.parametrize("kwargs,bad", [
    (dict(forget_init="chrno"), "forget_init"),
    (dict(forget_init="chrono", chrono_t_max=2.0), "chrono_t_max"),
    (dict(chrono_t_max=float("nan")), "chrono_t_max")])
def test_bad_forget_init_is_one_line_naming_it(make, kwargs, bad):
  with pytest.raises(ValueError, match=bad) as error:
    make(8, **kwargs)
  assert "\n" not in str(error.value)


def test_r2ac_config_exposes_the_choice():
  from experiments.configs import r2ac  # pylint: disable=g-import-not-at-top
  config = r2ac.default()
  for core in ("elstm", "lstm"):
    assert config.network.core_kwargs[core].forget_init == "chrono"
    assert config.network.core_kwargs[core].chrono_t_max == 100.0


@pytest.mark.parametrize("name", ["default", "tiny", "cartpole", "minigrid",
                                  "paper"])
def test_every_r2ac_preset_passes_its_checks_and_says_which_scale(name):
  """CPU presets carry the tuned rate and chrono gates; `paper` the paper's
  6e-4 and constant biases (GPU scale)."""
  from experiments.configs import r2ac  # pylint: disable=g-import-not-at-top
  config = r2ac.get_config(name)
  r2ac.check(config)
  gates = {config.network.core_kwargs[core].forget_init
           for core in ("elstm", "lstm")}
  if name == "paper":
    assert config.optimizer.learning_rate == 6e-4 and gates == {"constant"}
    assert config.network.hidden_size == 512
  else:
    assert config.optimizer.learning_rate == r2ac.LEARNING_RATE
    assert gates == {"chrono"}
  assert ("paper" in r2ac.__doc__ and "CPU presets" in r2ac.__doc__)
