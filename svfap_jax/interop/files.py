"""Reading and writing PyTorch checkpoint files (`.pth` / `.safetensors`) as numpy state_dicts.

`.pth` files are read with `torch.load(weights_only=True)` when torch is installed and otherwise with
a restricted unpickler that understands only tensors, storages and plain containers. Neither path
executes code from the file: a checkpoint that needs anything else is refused.
"""
from __future__ import annotations

import collections
import os
import pickle
import tempfile
import zipfile
from typing import Any, Mapping

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointFormatError(ValueError):
  pass


def _bfloat16():
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  return ml_dtypes.bfloat16


class _Storage:
  def __init__(self, data: np.ndarray):
    self.data = data


def _rebuild_tensor(storage, offset, size, stride, *unused):
  if not size:
    return storage.data[offset:offset + 1].reshape(())
  itemsize = storage.data.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage.data[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data, *unused):
  return data


class _StorageType:
  def __init__(self, name: str):
    self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a torch zip checkpoint into numpy arrays without importing torch."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
    super().__init__(file)
    self._archive, self._prefix, self._path = archive, prefix, path
    self._storages: dict[str, _Storage] = {}

  def find_class(self, module, name):
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("builtins", "set"): set,
    }
    if (module, name) in allowed:
      return allowed[(module, name)]
    if module == "torch" and (name in _STORAGE_DTYPES or name == "BFloat16Storage"):
      return _StorageType(name)
    raise CheckpointFormatError(
        f"{self._path}: refusing to load {module}.{name}; only tensors and plain containers are "
        "accepted. Re-save the file as a plain state_dict (torch.save(model.state_dict(), ...)).")

  def persistent_load(self, pid):
    kind, storage_type, key, _location, numel = pid
    if kind != "storage":
      raise CheckpointFormatError(f"{self._path}: unsupported persistent id {kind!r}")
    if key not in self._storages:
      name = storage_type.name
      dtype = _bfloat16() if name == "BFloat16Storage" else _STORAGE_DTYPES[name]
      raw = self._archive.read(f"{self._prefix}data/{key}")
      self._storages[key] = _Storage(np.frombuffer(raw, dtype=dtype, count=numel))
    return self._storages[key]


def _read_pth_without_torch(path: str) -> Any:
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise CheckpointFormatError(
        f"{path}: not a zip-format torch checkpoint (legacy torch<1.6 files need torch installed "
        "to read)") from e
  with archive:
    pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if not pkl:
      raise CheckpointFormatError(f"{path}: no data.pkl inside; not a torch checkpoint")
    prefix = pkl[0][:-len("data.pkl")]
    with archive.open(pkl[0]) as f:
      return _RestrictedUnpickler(f, archive, prefix, path).load()


def _to_numpy(value):
  if hasattr(value, "detach"):  # torch.Tensor
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _unwrap_state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
  """Finds the tensor dict inside common checkpoint wrappers ({'model': ...}, {'module': ...})."""
  if isinstance(obj, Mapping):
    for key in ("model", "module", "state_dict", "model_state"):
      if key in obj and isinstance(obj[key], Mapping):
        return _unwrap_state_dict(obj[key], path)
    tensors = {k: v for k, v in obj.items() if hasattr(v, "shape")}
    if tensors:
      return {k: _to_numpy(v) for k, v in tensors.items()}
  raise CheckpointFormatError(f"{path}: found no state_dict (a dict of tensors, optionally under "
                              "'model', 'module' or 'state_dict')")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a `.pth`/`.pt`/`.bin` or `.safetensors` checkpoint into {key: numpy array}."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return dict(load_file(path))
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return _unwrap_state_dict(_read_pth_without_torch(path), path)
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise CheckpointFormatError(
        f"{path}: torch.load(weights_only=True) refused the file ({e}). It contains objects other "
        "than tensors; re-save it as a plain state_dict.") from e
  return _unwrap_state_dict(obj, path)


def _atomic_target(path: str):
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  os.close(fd)
  return tmp


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str) -> str:
  """Writes `.safetensors` (flat) or `.pth` ({'model': state_dict}, needs torch), atomically."""
  path = os.fspath(path)
  tmp = _atomic_target(path)
  try:
    if path.endswith(".safetensors"):
      from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
      save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp)
    else:
      try:
        import torch  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError("writing .pth needs torch (pip install 'svfap_jax[test]'); "
                          "or export to .safetensors") from e
      tensors = collections.OrderedDict(
          (k, torch.from_numpy(np.array(v, dtype=v.dtype, copy=True))) for k, v in state_dict.items())
      torch.save({"model": tensors}, tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path
