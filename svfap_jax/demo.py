"""`make demo`: synthetic face clips -> TFRecords -> MAE pretraining (probed on the way) -> fine-tuning
from the MAE checkpoint and from scratch, with all and with a tenth of the labels -> multi-view test
-> demo_out/report.md and report.json. Sized for a 2-core CPU (< 15 minutes)."""
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


def label_subset(list_path: str, out_path: str, fraction: float) -> int:
  """Writes the first ceil(fraction * n_c) clips of each class c of a `<path> <label>` list.

  The synthetic lists are in random identity order, so a prefix per class is a stratified random
  sample; it is deterministic, so runs with the same seed compare the same clips. Returns the
  number of clips written.
  """
  by_class: dict[str, list[str]] = {}
  with open(list_path) as f:
    for line in f:
      if line.strip():
        by_class.setdefault(line.split()[-1], []).append(line.rstrip("\n"))
  kept = [l for lines in by_class.values() for l in lines[:max(1, int(np.ceil(fraction * len(lines))))]]
  with open(out_path, "w") as f:
    f.write("\n".join(kept) + "\n")
  return len(kept)


def _metric_rows(workdir: str) -> list[dict]:
  """The rows of a run's metrics.jsonl."""
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if l.strip()]


def _probe_png(rows: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.6))
  steps = [r["step"] for r in rows]
  for key, name in (("linear_uar", "linear probe"), ("knn_uar", "k-NN probe")):
    line, = ax.plot(steps, [100 * r[f"probe_{key}"] for r in rows], "o-", label=name)
    base = next((r[f"probe_random_{key}"] for r in rows if f"probe_random_{key}" in r), None)
    if base is not None:
      ax.axhline(100 * base, ls="--", color=line.get_color(), label=f"{name}, random init")
  ax.set(title="frozen-encoder probes during MAE pretraining", xlabel="pretraining step",
         ylabel="test UAR (%)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None) -> int:
  # The generator owns the list of appearance options (`sample_identity`).
  from data_pipelines.synthetic import VARIATIONS  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="svfap demo", description=__doc__)
  parser.add_argument("--out", default="demo_out")
  parser.add_argument("--clips-per-class", type=int, default=150)
  parser.add_argument("--pretrain-steps", type=int, default=0, help="0 = configs/demo_mae.py value")
  parser.add_argument("--finetune-steps", type=int, default=0, help="0 = configs/demo_mae.py value")
  parser.add_argument("--few-label-fraction", type=float, default=0.1,
                      help="fraction of the training labels of the label-efficiency runs")
  parser.add_argument("--few-label-steps", type=int, default=300,
                      help="fine-tuning steps of the label-efficiency runs")
  parser.add_argument("--probe-every", type=int, default=1000,
                      help="probe the pretraining encoder every N steps (0 = only at the end)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--variation", default="aligned", choices=VARIATIONS,
                      help="appearance spread of the synthetic faces (data_pipelines/synthetic.py)")
  parser.add_argument("--actors", type=int, default=0,
                      help="film this many people, each in every class, with subject-independent "
                      "splits (0: every clip a new person)")
  parser.add_argument("--workers", type=int, default=2, help="processes for data writing")
  parser.add_argument("--config-override", action="append", default=[], metavar="KEY=VALUE",
                      help="override a field of both demo configs (e.g. data.worker_count=8) or, "
                      "prefixed, of one (finetune:optim.lr=0.002)")
  args = parser.parse_args(argv)

  from configs import demo_mae as demo_config  # pylint: disable=g-import-not-at-top
  from data_pipelines import build  # pylint: disable=g-import-not-at-top
  from data_pipelines import records  # pylint: disable=g-import-not-at-top
  from data_pipelines.synthetic import EMOTIONS  # pylint: disable=g-import-not-at-top
  from data_pipelines.synthetic import make_synthetic_dataset  # pylint: disable=g-import-not-at-top
  from svfap_jax.train import loop  # pylint: disable=g-import-not-at-top

  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  t0 = time.time()
  timings = {}
  size = 112
  print(f"[demo] writing synthetic face clips to {out}/data", flush=True)
  data_dir = make_synthetic_dataset(os.path.join(out, "data"),
                                    num_clips_per_class=args.clips_per_class, num_frames=40,
                                    size=size, seed=args.seed, workers=args.workers,
                                    variation=args.variation, actors=args.actors)
  # The label-efficiency runs train on a stratified fraction of the same training clips.
  list_dir = os.path.join(out, "data", "raw", "lists", "split01")
  few = f"train_{round(100 * args.few_label_fraction)}pct"
  num_few = label_subset(os.path.join(list_dir, "train.csv"), os.path.join(list_dir, f"{few}.csv"),
                         args.few_label_fraction)
  code = build.main(["--out", data_dir, "--list", f"{few}={os.path.join(list_dir, few + '.csv')}",
                     "--label-names", ",".join(EMOTIONS), "--short-side", str(size),
                     "--workers", str(args.workers), "--quiet"])
  if code != 0:
    raise RuntimeError(f"prepare of the {few} split failed (exit {code})")
  timings["data_s"] = time.time() - t0

  runs = {}
  pre = demo_config.get_config("pretrain")
  pre.data.dir = data_dir
  pre.seed = args.seed
  apply_overrides(pre, args.config_override)
  if args.pretrain_steps:
    pre.total_steps = args.pretrain_steps
  # The monitor probes the frozen encoder on the labelled clips (and its random init once).
  pre.probe.data.dir = data_dir
  pre.probe.every_steps = args.probe_every or pre.total_steps
  runs["pretrain"] = os.path.join(out, "pretrain")
  print(f"[demo] MAE pretraining {pre.model.name} for {pre.total_steps} steps "
        f"(probes every {pre.probe.every_steps})", flush=True)
  t = time.time()
  loop.train(pre, runs["pretrain"])
  timings["pretrain_s"] = time.time() - t

  results = {}
  plan = [("finetune_pretrained", runs["pretrain"], "train", 0),
          ("finetune_scratch", "", "train", 0),
          (f"finetune_pretrained_{few}", runs["pretrain"], few, args.few_label_steps),
          (f"finetune_scratch_{few}", "", few, args.few_label_steps)]
  for name, init, split, steps in plan:
    ft = demo_config.get_config("finetune")
    ft.data.dir = data_dir
    ft.data.train_split = split
    ft.seed = args.seed
    apply_overrides(ft, args.config_override)
    ft.init_from = init
    if args.finetune_steps:
      ft.total_steps = args.finetune_steps
    if steps and not args.finetune_steps:
      ft.total_steps = steps
    if split != "train":
      ft.eval_every_steps = ft.total_steps
    runs[name] = os.path.join(out, name)
    print(f"[demo] fine-tuning {name} ({'from the pretrained encoder' if init else 'from scratch'},"
          f" split {split}) for {ft.total_steps} steps", flush=True)
    t = time.time()
    results[name] = loop.train(ft, runs[name])
    timings[f"{name}_s"] = time.time() - t

  _curves_png({k: v for k, v in runs.items() if "pct" not in k}, os.path.join(out, "curves.png"))
  pretrain_rows = _metric_rows(runs["pretrain"])
  probe_rows = [r for r in pretrain_rows if "probe_linear_uar" in r]
  fit_rows = [r for r in pretrain_rows if "recon_motion_r2" in r]
  if probe_rows:
    _probe_png(probe_rows, os.path.join(out, "probe.png"))
  recon_dir = os.path.join(runs["pretrain"], "reconstructions")
  recon = sorted(os.listdir(recon_dir))[-1] if os.path.isdir(recon_dir) else None
  info = records.load_info(data_dir)
  num_classes = info["num_classes"]
  chance = 1.0 / num_classes
  test = {name: {k: results[name]["test_last"][k] for k in ("uar", "war", "macro_f1")}
          for name, *_ in plan}
  few_pct, full_pct = f"{round(100 * args.few_label_fraction)} %", "100 %"
  efficiency = {
      full_pct: {"train_clips": info["splits"]["train"]["num_clips"],
                 "pretrained_uar": test["finetune_pretrained"]["uar"],
                 "scratch_uar": test["finetune_scratch"]["uar"]},
      few_pct: {"train_clips": num_few,
                "pretrained_uar": test[f"finetune_pretrained_{few}"]["uar"],
                "scratch_uar": test[f"finetune_scratch_{few}"]["uar"]},
  }
  probe = {}
  if probe_rows:
    last, first = probe_rows[-1], next(r for r in probe_rows if "probe_random_linear_uar" in r)
    probe = {"random_init": {k: first[f"probe_random_{k}"] for k in ("linear_uar", "knn_uar")},
             "pretrained": {k: last[f"probe_{k}"] for k in ("linear_uar", "knn_uar")},
             "pretrained_step": last["step"],
             "curve": [{"step": r["step"], "linear_uar": r["probe_linear_uar"],
                        "knn_uar": r["probe_knn_uar"]} for r in probe_rows]}
  reconstruction = ({k: fit_rows[-1][k] for k in ("step", "recon_motion_share",
                                                   "recon_static_r2", "recon_motion_r2")}
                    if fit_rows else {})
  timings["total_s"] = time.time() - t0
  summary = {"num_classes": num_classes, "chance_uar": chance, "variation": args.variation,
             "test": test,
             "label_efficiency": efficiency, "probe": probe, "reconstruction": reconstruction,
             "timings": timings,
             "train_clips": info["splits"]["train"]["num_clips"],
             "test_clips": info["splits"]["test"]["num_clips"]}
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(summary, f, indent=2)
  lines = [
      "# svfap_jax demo report", "",
      f"Synthetic face clips ({args.variation}): {summary['train_clips']} train / "
      f"{summary['test_clips']} test, "
      f"{num_classes} expression classes (chance UAR {100 * chance:.1f} %). MAE pretraining "
      "uses every training clip without its label.", "",
      "| labels | train clips | from MAE checkpoint UAR % | from scratch UAR % | difference |",
      "|---|---|---|---|---|",
      *[f"| {k} | {v['train_clips']} | {100 * v['pretrained_uar']:.1f} | "
        f"{100 * v['scratch_uar']:.1f} | {100 * (v['pretrained_uar'] - v['scratch_uar']):+.1f} |"
        for k, v in efficiency.items()], "",
  ]
  if probe:
    lines += [
        f"Frozen-encoder probes on the test split (step {probe['pretrained_step']}):", "",
        "| encoder | linear probe UAR % | k-NN probe UAR % |", "|---|---|---|",
        f"| MAE-pretrained | {100 * probe['pretrained']['linear_uar']:.1f} | "
        f"{100 * probe['pretrained']['knn_uar']:.1f} |",
        f"| random init | {100 * probe['random_init']['linear_uar']:.1f} | "
        f"{100 * probe['random_init']['knn_uar']:.1f} |", "",
        "![probes](probe.png)", ""]
  lines += ["| run | test UAR % | test WAR % | macro F1 % |", "|---|---|---|---|",
            *[f"| {n} | {100 * m['uar']:.1f} | {100 * m['war']:.1f} | {100 * m['macro_f1']:.1f} |"
              for n, m in test.items()], "",
            "![curves](curves.png)", ""]
  if recon:
    lines += ["MAE reconstruction (see svfap_jax/visualize.py for the panels):", "",
              f"![reconstruction](pretrain/reconstructions/{recon})", ""]
  if reconstruction:
    lines += [
        f"Masked tubes at step {reconstruction['step']}, split into each position's appearance "
        "averaged over the clip (static) and its change over time (motion, where expressions "
        f"live; {100 * reconstruction['recon_motion_share']:.1f} % of the target energy): "
        f"R² static {reconstruction['recon_static_r2']:.3f}, motion "
        f"{reconstruction['recon_motion_r2']:.3f} (0 = no change over time predicted).", ""]
  lines.append("Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines[4:8]))
  print(f"[demo] report: {os.path.join(out, 'report.md')} ({timings['total_s']:.0f} s)")
  return 0
