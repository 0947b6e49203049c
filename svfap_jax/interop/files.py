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
        ("__builtin__", "set"): set,  # torch.save pickles with protocol 2
        # DeepSpeed stores parameter shapes as torch.Size, a tuple.
        ("torch", "Size"): tuple,
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


class StateDict(dict):
  """{key: numpy array} read from a file; `origin` says where in the file the weights were found
  (e.g. "weights under 'model'; not used: 'model_ema'"), '' for a flat file."""
  origin: str = ""


# Names under which training code stores the model weights, most usual first; an exponential moving
# average copy is taken only when the file has no plain weights.
_WEIGHT_CONTAINERS = ("model", "module", "state_dict", "model_state", "model_state_dict")
_EMA_CONTAINERS = ("model_ema", "ema", "state_dict_ema", "ema_state_dict", "ema_model")
_NOT_WEIGHTS = ("optimizer", "optimizer_states", "optimizer_state", "optim", "lr_scheduler",
                "lr_schedulers", "scheduler", "scaler", "loops", "callbacks")


def _is_tensor(value) -> bool:
  return hasattr(value, "shape") and hasattr(value, "dtype")


def _holds_tensors(obj, depth: int = 4) -> bool:
  if not isinstance(obj, Mapping) or depth == 0:
    return False
  return any(_is_tensor(v) or _holds_tensors(v, depth - 1) for v in obj.values())


def _find_weights(obj: Mapping, where: list[str], unused: list[str]) -> Mapping:
  """Descends through checkpoint containers to the dict of tensors; records the path taken."""
  named = [k for k in _WEIGHT_CONTAINERS + _EMA_CONTAINERS
           if isinstance(obj.get(k), Mapping) and _holds_tensors(obj[k])]
  if not named and not any(_is_tensor(v) for v in obj.values()):
    # One container of another name (e.g. {'weights': {...}, 'epoch': 3}) is unambiguous.
    named = [k for k, v in obj.items()
             if isinstance(k, str) and k not in _NOT_WEIGHTS and _holds_tensors(v)]
    if len(named) != 1:
      return obj
  if not named:
    return obj
  where.append(named[0])
  unused += [repr(k) for k in named[1:]]
  return _find_weights(obj[named[0]], where, unused)


def _unwrap_state_dict(obj: Any, path: str) -> StateDict:
  """Finds the tensor dict inside common checkpoint wrappers ({'model': ...}, {'state_dict': ...},
  DeepSpeed's {'module': ...}, EMA copies) and converts it to numpy."""
  if isinstance(obj, Mapping):
    where, unused = [], []
    found = _find_weights(obj, where, unused)
    tensors = StateDict((k, _to_numpy(v)) for k, v in found.items() if _is_tensor(v))
    if tensors:
      if where:
        tensors.origin = "weights under " + "".join(f"[{k!r}]" for k in where)
        if unused:
          tensors.origin += f" (not used: {', '.join(unused)})"
      return tensors
  raise CheckpointFormatError(
      f"{path}: found no state_dict (a dict of tensors, optionally under "
      f"{', '.join(repr(k) for k in _WEIGHT_CONTAINERS + _EMA_CONTAINERS)})")


def load_state_dict(path: str) -> StateDict:
  """Reads a `.pth`/`.pt`/`.bin` or `.safetensors` checkpoint into {key: numpy array}.

  Half-precision tensors keep their dtype (bfloat16 is read as float32 through torch). In a `.pth`
  holding more than weights, the weights under 'model', 'module', 'state_dict', 'model_state' or
  'model_state_dict' are taken, else an EMA copy ('model_ema', 'ema', ...); the result's `origin`
  says which.

  Raises:
    FileNotFoundError: `path` does not exist.
    CheckpointFormatError: the file is not a checkpoint, holds code, or holds no tensors.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return StateDict(load_file(path))
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
