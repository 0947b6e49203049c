"""svfap_jax: SVFAP (Self-supervised Video Facial Affect Perceiver) in JAX/Flax."""
from svfap_jax.api import Model, create_model, export_torch, import_torch
from svfap_jax.models.registry import MODELS, ModelSpec, get_spec

__all__ = ["Model", "create_model", "export_torch", "import_torch", "MODELS", "ModelSpec",
           "get_spec"]
__version__ = "0.1.0"
