"""Train state: a plain pytree that Orbax saves and jit shards."""
from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array                 # raw uint32 key data: checkpointable as a plain array
  ema_params: Optional[Any] = None

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, seed: int, ema: bool = False):
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               rng=jax.random.key_data(jax.random.key(seed)),
               ema_params=jax.tree_util.tree_map(jnp.copy, params) if ema else None)

  def step_key(self):
    """A fresh key per step, derived from (seed, step): identical after a resume."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)
