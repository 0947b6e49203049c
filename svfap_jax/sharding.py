"""Device mesh, logical-axis rules and host <-> global array plumbing.

One mesh ('data', 'fsdp', 'tensor') serves every setting, from one CPU to a pod slice. Parameters
carry logical axis names (see `svfap_jax.models.layers`); `LOGICAL_RULES` is the single place that
maps them onto mesh axes. The batch is split over ('data', 'fsdp'); parameters are sharded along
'fsdp' (ZeRO-3 style) and, for attention heads and MLP hidden units, along 'tensor'.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed_out", "tensor"),
    ("classes", None),
)


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves -1 (at most one) to fill the devices; validates the product."""
  shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    if num_devices % known:
      raise ValueError(f"{num_devices} devices cannot be split into mesh {dict(zip(MESH_AXES, shape))}")
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, "
                     f"{num_devices} are available")
  return tuple(shape)


def create_mesh(sizes: Mapping[str, int], devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """The ('data', 'fsdp', 'tensor') mesh over `devices` (default: all of `jax.devices()`).

  Args:
    sizes: devices per axis, e.g. {"data": -1} or {"data": 2, "fsdp": 4}; axes not given are 1
      and at most one may be -1 (all remaining devices).
    devices: the devices to lay out; the physical topology is followed where JAX knows it
      (TPU, NVLink domains), else the given order.

  Returns:
    A `jax.sharding.Mesh` with axis names `MESH_AXES` and shape (data, fsdp, tensor).

  Raises:
    ValueError: an unknown axis name, more than one -1, or sizes whose product is not the
      number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(sizes, len(devices))
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, AssertionError, NotImplementedError):
    # CPU and some GPU topologies have no physical layout to honour.
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def _mesh_axes_for(logical: Optional[str], rules) -> Any:
  for name, axes in rules:
    if name == logical:
      return axes
  return None


def logical_to_partition_spec(logical_spec, shape, mesh: Mesh, rules=LOGICAL_RULES) -> P:
  """Maps a logical PartitionSpec to mesh axes, replicating dims the mesh axes do not divide.

  Each mesh axis is used at most once per array (the first dimension that claims it wins).
  """
  used: set[str] = set()
  out = []
  for dim, logical in zip(shape, tuple(logical_spec) + (None,) * (len(shape) - len(logical_spec))):
    axes = _mesh_axes_for(logical, rules)
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if not axes or dim % size:
      out.append(None)
      continue
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  return P(*out)


def tree_shardings(logical_specs, abstract_tree, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for a pytree from its logical specs (None/P() = replicated)."""
  def one(spec, leaf):
    spec = spec if isinstance(spec, P) else P()
    return NamedSharding(mesh, logical_to_partition_spec(spec, np.shape(leaf), mesh, rules))
  return jax.tree_util.tree_map(one, logical_specs, abstract_tree,
                                is_leaf=lambda x: isinstance(x, P) or x is None)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def host_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's local slice of the batch into one global array per field.

  Non-numeric fields (clip ids) stay on the host.
  """
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "OSU":
      continue
    out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
  return out


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in local batch order.

  The inverse of `host_to_global` for one field: (global_batch, ...) -> (local_batch, ...).
  Replicas of a row (a mesh axis the batch is not split over) are taken once.
  """
  if x.is_fully_addressable:
    return np.asarray(x)
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for s in shards:
    key = (s.index[0].start, s.index[0].stop)
    if key not in seen:
      seen.add(key)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


def global_to_host(x: jax.Array) -> np.ndarray:
  """The full value of a (possibly multi-process) array on every host."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def initialize_distributed(coordinator: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> bool:
  """Starts jax.distributed when several processes are requested (flags, then environment).

  On TPU VMs and under SLURM JAX finds everything itself when SVFAP_DISTRIBUTED=1 is set.
  Returns True when the distributed runtime was initialised here.
  """
  coordinator = coordinator or os.environ.get("SVFAP_COORDINATOR")
  num_processes = num_processes or (int(os.environ["SVFAP_NUM_PROCESSES"])
                                    if "SVFAP_NUM_PROCESSES" in os.environ else None)
  if process_id is None and "SVFAP_PROCESS_ID" in os.environ:
    process_id = int(os.environ["SVFAP_PROCESS_ID"])
  auto = os.environ.get("SVFAP_DISTRIBUTED", "") == "1"
  if not coordinator and not auto:
    return False
  if coordinator and (num_processes is None or process_id is None):
    raise ValueError("--coordinator needs --num-processes and --process-id "
                     "(or SVFAP_NUM_PROCESSES / SVFAP_PROCESS_ID)")
  kwargs = {}
  if coordinator:
    kwargs = dict(coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  _use_coordination_barriers()
  return True


def _use_coordination_barriers() -> None:
  """Makes Orbax meet at the coordination service's barriers rather than at collectives.

  Processes reach a barrier minutes apart when one is still compiling; a collective gives a late
  peer little time (gloo, the CPU backend's, 30 s) while the coordination service waits out the
  barrier's timeout.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top,unused-import
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # outside an absl app: the library flags keep their defaults
  flags.FLAGS.experimental_orbax_use_distributed_barrier = True
