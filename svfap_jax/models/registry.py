"""Named model sizes.

Every size the project trains, tests or benchmarks is one `ModelSpec` here, so the JAX models, the
PyTorch twin, configs and the CLI agree on what "svfap_base" means.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

# Values of ModelSpec.attention_impl (documented in svfap_jax/models/layers.py).
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "chunked", "aten")
# Values of ModelSpec.pos_embed (svfap_jax/models/layers.py: position_table).
POS_EMBEDS = ("sincos_1d", "sincos_3d")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Architecture hyper-parameters of one encoder (+ its MAE decoder)."""
  arch: str                      # "tpsbt" or "vit"
  embed_dim: int
  num_heads: int
  stage_depths: tuple[int, ...]  # TPSBT: blocks per stage; ViT: a single entry (the depth)
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  num_bottleneck_tokens: int = 8
  temporal_kernel_size: int = 2
  spatial_hidden_dim: int = 128
  img_size: int = 160
  patch_size: int = 16
  num_frames: int = 16
  tubelet_size: int = 2
  in_chans: int = 3
  init_values: float = 0.0       # layer-scale init; 0 disables the gammas
  layer_norm_eps: float = 1e-6
  decoder_embed_dim: int = 384
  decoder_depth: int = 4
  decoder_num_heads: int = 6
  # Attention kernel: "auto" picks per backend and dtype (see layers.resolve_attention_impl);
  # "xla", "cudnn", "chunked" or "aten" force one. Numerics only, never parameters or state_dict
  # keys.
  attention_impl: str = "auto"
  # Fixed position table of encoder and decoder. "sincos_1d" is the original's (one sinusoid over
  # the flattened (t, h, w) token index, VideoMAE's get_sinusoid_encoding_table); "sincos_3d"
  # concatenates separate sinusoids of t, h and w. The original code only knows "sincos_1d", so
  # `export` refuses the other. Not a parameter: checkpoints carry no table.
  pos_embed: str = "sincos_1d"
  # The MAE decoder's table when it differs from the encoder's ("" = pos_embed). The decoder
  # exists only in pretraining, so an encoder on the original's table still exports for
  # fine-tuning in the original code whatever its decoder used.
  decoder_pos_embed: str = ""

  @property
  def decoder_table(self) -> str:
    """The position table of the MAE decoder: decoder_pos_embed, else pos_embed."""
    return self.decoder_pos_embed or self.pos_embed

  @property
  def depth(self) -> int:
    return sum(self.stage_depths)

  @property
  def temporal_tokens(self) -> int:
    return self.num_frames // self.tubelet_size

  @property
  def spatial_tokens(self) -> int:
    return (self.img_size // self.patch_size) ** 2

  @property
  def token_grid(self) -> tuple[int, int, int]:
    """(temporal, rows, columns) tokens of a full clip."""
    side = self.img_size // self.patch_size
    return (self.temporal_tokens, side, side)

  @property
  def num_patches(self) -> int:
    return self.temporal_tokens * self.spatial_tokens

  @property
  def patch_pixels(self) -> int:
    """Reconstruction target length per token: tubelet * patch * patch * channels."""
    return self.tubelet_size * self.patch_size ** 2 * self.in_chans

  def stage_temporal_tokens(self, stage: int) -> int:
    """Temporal length of stage `stage` (0-based) after its temporal downsampling."""
    return self.temporal_tokens // (self.temporal_kernel_size ** stage)

  def validate(self) -> "ModelSpec":
    errors = []
    if self.arch not in ("tpsbt", "vit"):
      errors.append(f"arch={self.arch!r} must be 'tpsbt' or 'vit'")
    if self.embed_dim % self.num_heads:
      errors.append(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
    if self.decoder_embed_dim % self.decoder_num_heads:
      errors.append(f"decoder_embed_dim={self.decoder_embed_dim} is not divisible by "
                    f"decoder_num_heads={self.decoder_num_heads}")
    if self.img_size % self.patch_size:
      errors.append(f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")
    if self.num_frames % self.tubelet_size:
      errors.append(f"num_frames={self.num_frames} is not a multiple of tubelet_size={self.tubelet_size}")
    if self.attention_impl not in ATTENTION_IMPLS:
      errors.append(f"attention_impl={self.attention_impl!r} must be one of "
                    f"{', '.join(ATTENTION_IMPLS)}")
    if self.pos_embed not in POS_EMBEDS:
      errors.append(f"pos_embed={self.pos_embed!r} must be one of {', '.join(POS_EMBEDS)}")
    if self.decoder_pos_embed and self.decoder_pos_embed not in POS_EMBEDS:
      errors.append(f"decoder_pos_embed={self.decoder_pos_embed!r} must be '' or one of "
                    f"{', '.join(POS_EMBEDS)}")
    if self.arch == "vit" and len(self.stage_depths) != 1:
      errors.append("a ViT has one stage: stage_depths=(depth,)")
    if self.arch == "tpsbt":
      if any(d < 1 for d in self.stage_depths):
        errors.append(f"every TPSBT stage needs at least one block, got {self.stage_depths}")
      shrink = self.temporal_kernel_size ** (len(self.stage_depths) - 1)
      if self.temporal_tokens % shrink:
        errors.append(
            f"{self.temporal_tokens} temporal tokens cannot be downsampled by "
            f"{self.temporal_kernel_size} {len(self.stage_depths) - 1} times")
    if errors:
      raise ValueError("invalid model spec: " + "; ".join(errors))
    return self


MODELS: dict[str, ModelSpec] = {
    # SVFAP-S / TPSBT-S: 29.7M params, 18.2 GMACs per 16x160^2 view (`describe`).
    "svfap_small": ModelSpec("tpsbt", 384, 6, (8, 4, 2)),
    # SVFAP-B / TPSBT-B: 77.6M params, 43.8 GMACs per view (`describe`; paper 43.6).
    "svfap_base": ModelSpec("tpsbt", 512, 8, (12, 6, 3)),
    # The paper's "vanilla ViT" ablation (Table 3): 24 plain blocks at width 512.
    "vanilla_vit_base": ModelSpec("vit", 512, 8, (24,)),
    # VideoMAE ViT-B at 160 px (Table 7 baseline).
    "vit_base": ModelSpec("vit", 768, 12, (12,)),
    "vit_small": ModelSpec("vit", 384, 6, (12,)),
    # Tiny sizes for tests and the CPU demo.
    "svfap_tiny": ModelSpec("tpsbt", 64, 4, (2, 2, 2), num_bottleneck_tokens=4, spatial_hidden_dim=32,
                            img_size=64, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2),
    # The smallest TPSBT (one block per stage, width 32): every module kind of the encoder. Its
    # train step compiles in ~60 % of svfap_tiny's time (8 vs 14 s, 2-core CPU); for tests of the
    # run machinery (resume, devices, processes), where the model's capacity does not matter.
    "svfap_micro": ModelSpec("tpsbt", 32, 2, (1, 1, 1), num_bottleneck_tokens=2,
                             spatial_hidden_dim=16, img_size=64, decoder_embed_dim=16,
                             decoder_depth=1, decoder_num_heads=1),
    "vit_tiny": ModelSpec("vit", 64, 4, (3,), img_size=64, decoder_embed_dim=32, decoder_depth=1,
                          decoder_num_heads=2),
    # The `make demo` model (configs/demo_mae.py; PRETRAINING.md has the measurements behind it):
    # svfap_tiny's encoder with 8 px patches, so a 64 px frame has 8 x 8 tokens and tube masking
    # leaves several visible per frame; a per-axis position table in the decoder, with which a
    # small decoder can place what it predicts (with the 1-D table the MAE reproduces none of the
    # change of expression), while the encoder keeps the original's table and so exports;
    # a 64-wide 2-block decoder, the smallest that learnt the change of expression; 8 frames (one
    # clip spans 32 frames at stride 4), half the tokens of 16, so 2-core CPUs get enough steps.
    "svfap_demo": ModelSpec("tpsbt", 64, 4, (2, 2, 2), num_frames=8, num_bottleneck_tokens=4,
                            spatial_hidden_dim=32, img_size=64, patch_size=8,
                            decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4,
                            decoder_pos_embed="sincos_3d"),
}


def get_spec(name: str, **overrides) -> ModelSpec:
  """Returns the named spec, with field overrides, validated."""
  if name not in MODELS:
    raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
  spec = MODELS[name]
  unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelSpec)}
  if unknown:
    raise TypeError(f"unknown ModelSpec field(s) for {name!r}: {', '.join(sorted(unknown))}")
  if "stage_depths" in overrides:
    overrides["stage_depths"] = tuple(overrides["stage_depths"])
  return dataclasses.replace(spec, **overrides).validate()


def register(name: str, spec: ModelSpec, overwrite: bool = False) -> None:
  if name in MODELS and not overwrite:
    raise KeyError(f"model {name!r} is already registered")
  MODELS[name] = spec.validate()
