"""`export` (Orbax workdir -> PyTorch file) and `import` (PyTorch file -> Orbax workdir)."""
from __future__ import annotations

import argparse
import json
import sys

import etils.epath as epath
import jax
import orbax.checkpoint as ocp

from svfap_jax import api, checkpoint
from svfap_jax.interop import files, mapping
from svfap_jax.models import classifier, registry


def _non_original_tables(spec, pretrain: bool) -> list[tuple[str, str]]:
  """(spec field, table) of each fixed position table of `spec` that the original code lacks
  (it only has 'sincos_1d'); weights moved between the two would compute something else."""
  if spec is None:
    return []
  tables = {"pos_embed": spec.pos_embed}
  if pretrain:
    tables["decoder_pos_embed"] = spec.decoder_table
  return [(field, table) for field, table in tables.items() if table != "sincos_1d"]


def export_main(argv) -> int:
  parser = argparse.ArgumentParser(
      prog="svfap export", description="Writes a run's parameters as a PyTorch state_dict with "
      "the original SVFAP key names: .pth ({'model': state_dict}) or .safetensors.")
  parser.add_argument("--workdir", required=True, help="run dir, its checkpoints/ or best/ dir")
  parser.add_argument("--out", required=True, help="output .pth or .safetensors")
  parser.add_argument("--which", choices=["best", "last"], default="last")
  args = parser.parse_args(argv)
  path = args.workdir
  if args.which == "best" and (epath.Path(path) / "best").exists():
    path = str(epath.Path(path) / "best")
  params, meta = checkpoint.restore_params(path)
  spec = registry.MODELS.get(meta.get("model", ""))
  pretrain = "decoder" in params
  for field, table in _non_original_tables(spec, pretrain):
    print(f"export: model {meta['model']} uses the position table {field}={table!r}; the "
          "original SVFAP code only has 'sincos_1d', so its weights would load there and "
          f"compute something else. Export a model whose spec keeps {field}='sincos_1d'"
          + (" (a fine-tuned model carries no decoder)." if field.startswith("decoder") else "."),
          file=sys.stderr)
    return 2
  # The original classifier has no standardisation layer: a linear-probe head is folded into a
  # plain head with the same logits.
  state_dict = mapping.to_torch_state_dict(
      params if pretrain else classifier.fold_feature_standardization(params), pretrain=pretrain)
  files.save_state_dict(state_dict, args.out)
  print(f"wrote {len(state_dict)} tensors ({'pretraining' if pretrain else 'classifier'} model "
        f"{meta.get('model', '?')}, step {meta.get('step', '?')}) to {args.out}")
  return 0


def import_main(argv) -> int:
  parser = argparse.ArgumentParser(
      prog="svfap import", description="Converts a PyTorch SVFAP checkpoint (original or ours) "
      "into an Orbax checkpoint usable as --config.init_from or with `export`/`evaluate`.")
  parser.add_argument("--torch", required=True, help=".pth/.pt/.bin/.safetensors file")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--model", default="svfap_base", help="registered model name")
  parser.add_argument("--num-classes", type=int, default=0)
  parser.add_argument("--pretrain", action="store_true", help="import as a pretraining model")
  parser.add_argument("--quirks", action="store_true",
                      help="pretraining model with original_pretrain_quirks=True")
  args = parser.parse_args(argv)
  for field, table in _non_original_tables(registry.MODELS.get(args.model), args.pretrain):
    print(f"import: model {args.model} uses the position table {field}={table!r}; PyTorch SVFAP "
          "checkpoints were trained with 'sincos_1d', so their weights would compute something "
          f"else there. Import into a model whose spec keeps {field}='sincos_1d'"
          + (" (or without --pretrain: a classifier carries no decoder)."
             if field.startswith("decoder") else "."), file=sys.stderr)
    return 2
  model = api.import_torch(args.torch, args.model, num_classes=args.num_classes,
                           pretrain=args.pretrain, original_pretrain_quirks=args.quirks)
  meta = {"model": args.model, "mode": "pretrain" if args.pretrain else "finetune", "step": 0,
          "num_outputs": args.num_classes, "source": str(checkpoint.absolute_path(args.torch))}
  manager = checkpoint.open_manager(checkpoint.absolute_path(args.workdir) / "checkpoints",
                                    item_names=("state", "meta"), create=True)
  manager.save(0, args=ocp.args.Composite(
      state=ocp.args.StandardSave({"params": jax.device_get(model.params)}),
      meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()
  print(json.dumps({"workdir": args.workdir, "params": model.num_params, **meta}))
  return 0
