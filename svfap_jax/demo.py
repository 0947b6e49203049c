"""`make demo`: synthetic face clips -> TFRecords -> MAE pretraining -> fine-tuning (pretrained and
from scratch) -> multi-view test -> demo_out/report.md. Sized for a 2-core CPU (< 15 minutes)."""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _curves_png(runs: dict[str, str], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for name, workdir in runs.items():
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if l.strip()]
    train = [r for r in rows if "loss" in r and "split" not in r]
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label=name)
    evals = [r for r in rows if r.get("split") == "test" and "uar" in r]
    if evals:
      axes[1].plot([r["step"] for r in evals], [100 * r["uar"] for r in evals], "o-", label=name)
  axes[0].set(title="training loss", xlabel="step")
  axes[1].set(title="test UAR (%) during fine-tuning", xlabel="step")
  for ax in axes:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def apply_overrides(config, overrides) -> None:
  """Applies "[mode:]a.b=value" strings to `config` (value parsed as a Python literal, else kept
  as a string); a "pretrain:" or "finetune:" prefix limits an override to that mode's config."""
  import ast  # pylint: disable=g-import-not-at-top
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"--config-override expects [MODE:]KEY=VALUE, got {item!r}")
    mode, colon, rest = key.partition(":")
    if colon:
      if mode not in ("pretrain", "finetune"):
        raise ValueError(f"--config-override {item!r}: prefix must be pretrain: or finetune:")
      if mode != config.mode:
        continue
      key = rest
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    config.update_from_flattened_dict({key: value})


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="svfap demo", description=__doc__)
  parser.add_argument("--out", default="demo_out")
  parser.add_argument("--clips-per-class", type=int, default=150)
  parser.add_argument("--pretrain-steps", type=int, default=0, help="0 = configs/demo.py value")
  parser.add_argument("--finetune-steps", type=int, default=0, help="0 = configs/demo.py value")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--variation", default="studio", choices=("studio", "full"),
                      help="appearance spread of the synthetic faces (data_pipelines/synthetic.py)")
  parser.add_argument("--workers", type=int, default=2, help="processes for data writing")
  parser.add_argument("--config-override", action="append", default=[], metavar="KEY=VALUE",
                      help="override a field of both demo configs (e.g. data.worker_count=8) or, "
                      "prefixed, of one (finetune:optim.lr=0.002)")
  args = parser.parse_args(argv)

  from configs import demo as demo_config  # pylint: disable=g-import-not-at-top
  from data_pipelines.synthetic import make_synthetic_dataset  # pylint: disable=g-import-not-at-top
  from svfap_jax.train import loop  # pylint: disable=g-import-not-at-top

  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  t0 = time.time()
  timings = {}
  print(f"[demo] writing synthetic face clips to {out}/data", flush=True)
  data_dir = make_synthetic_dataset(os.path.join(out, "data"),
                                    num_clips_per_class=args.clips_per_class, num_frames=40,
                                    size=112, seed=args.seed, workers=args.workers,
                                    variation=args.variation)
  timings["data_s"] = time.time() - t0

  runs = {}
  pre = demo_config.get_config("pretrain")
  pre.data.dir = data_dir
  pre.seed = args.seed
  apply_overrides(pre, args.config_override)
  if args.pretrain_steps:
    pre.total_steps = args.pretrain_steps
  runs["pretrain"] = os.path.join(out, "pretrain")
  print(f"[demo] MAE pretraining {pre.model.name} for {pre.total_steps} steps", flush=True)
  t = time.time()
  loop.train(pre, runs["pretrain"])
  timings["pretrain_s"] = time.time() - t

  results = {}
  for name, init in (("finetune_pretrained", runs["pretrain"]), ("finetune_scratch", "")):
    ft = demo_config.get_config("finetune")
    ft.data.dir = data_dir
    ft.seed = args.seed
    apply_overrides(ft, args.config_override)
    ft.init_from = init
    if args.finetune_steps:
      ft.total_steps = args.finetune_steps
    runs[name] = os.path.join(out, name)
    print(f"[demo] fine-tuning ({'from the pretrained encoder' if init else 'from scratch'}) for "
          f"{ft.total_steps} steps", flush=True)
    t = time.time()
    results[name] = loop.train(ft, runs[name])
    timings[f"{name}_s"] = time.time() - t

  _curves_png({k: v for k, v in runs.items()}, os.path.join(out, "curves.png"))
  recon = sorted(os.listdir(os.path.join(runs["pretrain"], "reconstructions")))[-1]
  info = json.load(open(os.path.join(data_dir, "dataset_info.json")))
  num_classes = info["num_classes"]
  chance = 1.0 / num_classes
  rows = []
  for name in ("finetune_pretrained", "finetune_scratch"):
    m = results[name]["test_last"]
    rows.append((name, m["uar"], m["war"], m["macro_f1"]))
  timings["total_s"] = time.time() - t0
  summary = {"num_classes": num_classes, "chance_uar": chance,
             "test": {name: {"uar": u, "war": w, "macro_f1": f} for name, u, w, f in rows},
             "timings": timings,
             "train_clips": info["splits"]["train"]["num_clips"],
             "test_clips": info["splits"]["test"]["num_clips"]}
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(summary, f, indent=2)
  lines = [
      "# svfap_jax demo report", "",
      f"Synthetic face clips: {summary['train_clips']} train / {summary['test_clips']} test, "
      f"{num_classes} expression classes (chance UAR {100 * chance:.1f} %).", "",
      "| run | test UAR % | test WAR % | macro F1 % |", "|---|---|---|---|",
      *[f"| {n} | {100 * u:.1f} | {100 * w:.1f} | {100 * f:.1f} |" for n, u, w, f in rows], "",
      f"Pretrained/chance UAR ratio: {rows[0][1] / chance:.2f}", "",
      "![curves](curves.png)", "",
      "MAE reconstruction (rows: original, masked input, reconstruction):", "",
      f"![reconstruction](pretrain/reconstructions/{recon})", "",
      "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
  ]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines[4:8]))
  print(f"[demo] report: {os.path.join(out, 'report.md')} ({timings['total_s']:.0f} s)")
  return 0
