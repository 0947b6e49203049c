"""svfap_jax: SVFAP (Self-supervised Video Facial Affect Perceiver) in JAX/Flax."""
from svfap_jax.api import Model, create_model, export_torch, import_torch
from svfap_jax.models.registry import MODELS, ModelSpec, get_spec

__all__ = ["Model", "create_model", "export_torch", "import_torch", "MODELS", "ModelSpec",
           "get_spec", "predict_video"]
__version__ = "0.1.0"


def predict_video(model_or_workdir, path, **kwargs):
  """Per-window emotion predictions for one video (see `svfap_jax.predict.predict_video`).

  Imported on first use: the video/face-detection stack is heavy and most users of the package
  (training, data reading) do not need it.
  """
  from svfap_jax import predict  # pylint: disable=g-import-not-at-top
  return predict.predict_video(model_or_workdir, path, **kwargs)
