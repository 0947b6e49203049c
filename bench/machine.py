"""The machine a benchmark ran on, described one way for every table header and JSON record."""
import os
import platform


def cpu_name() -> str:
  """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    if names:
      return names[0]
  except OSError:
    pass
  return platform.processor() or platform.machine()


def describe(with_jax: bool = True) -> str:
  """E.g. '2 cores, AMD EPYC 7B13; Python 3.11.2; jax 0.10.2 on cpu'.

  with_jax=False leaves JAX out (and does not import it), for benchmarks that do not use it.
  """
  text = f"{os.cpu_count()} cores, {cpu_name()}; Python {platform.python_version()}"
  if with_jax:
    import jax  # pylint: disable=g-import-not-at-top
    text += f"; jax {jax.__version__} on {jax.devices()[0].device_kind}"
  return text


def report(rows: list, table: str, json_path: str = "", indent: int = 2) -> None:
  """Prints the machine and a benchmark's markdown table; writes {"machine", "rows"} JSON."""
  import json  # pylint: disable=g-import-not-at-top
  print(describe())
  print(table)
  if json_path:
    with open(json_path, "w") as f:
      json.dump({"machine": describe(), "rows": rows}, f, indent=indent)
