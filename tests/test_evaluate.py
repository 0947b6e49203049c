"""Evaluation's compiled-step cache: keyed by the module's and the mesh's value, not their ids."""
import gc

import jax
import numpy as np

from svfap_jax import api, sharding
from svfap_jax.train import evaluate


def _shapes(module, spec, batch):
  """Abstract params and a uint8 batch of `module` (traced only, nothing compiles)."""
  video = jax.ShapeDtypeStruct((batch, spec.num_frames, spec.img_size, spec.img_size, 3),
                               np.uint8)
  params = jax.eval_shape(module.init, jax.random.key(0),
                          jax.ShapeDtypeStruct(video.shape, np.float32))["params"]
  return params, {"video": video}


def test_step_cache_is_keyed_by_value():
  spec = api.get_spec("svfap_tiny")
  mesh = sharding.create_mesh({"data": -1})
  three = api.build_module(spec, num_classes=3)
  fn = evaluate._eval_fn(three, "classification", mesh)
  # An equal module built again, and an equal mesh, reuse the compiled step.
  assert evaluate._eval_fn(api.build_module(spec, num_classes=3), "classification",
                           sharding.create_mesh({"data": -1})) is fn
  assert jax.eval_shape(fn, *_shapes(three, spec, 2)).shape == (2, 3)
  # Modules made and dropped one after the other may share an id; each still gets its own step,
  # and that step scores with its own head.
  seen = {}
  for k in (5, 6, 5):
    module = api.build_module(spec, num_classes=k)
    step = evaluate._eval_fn(module, "classification", mesh)
    assert seen.setdefault(k, step) is step
    assert jax.eval_shape(step, *_shapes(module, spec, 2)).shape == (2, k)
    del module
    gc.collect()
  assert seen[5] is not seen[6] and fn not in (seen[5], seen[6])
  # The task is part of the key.
  assert evaluate._eval_fn(three, "regression", mesh) is not fn
