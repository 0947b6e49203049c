"""`describe`: parameter counts and GMACs per view against the paper's numbers."""
import json
import subprocess
import sys

import pytest

from svfap_jax.describe import describe


@pytest.mark.parametrize("name,gmacs,pretrain_gmacs", [
    ("svfap_base", 43.5, 12.9),        # paper: 43.6 G fine-tune, 12.9 G pretraining at 90 %
    ("vanilla_vit_base", 76.8, None),  # paper Table 3 vanilla ViT (measured 76.8 GMACs)
])
def test_gmacs_match_paper(name, gmacs, pretrain_gmacs):
  r = describe(name, pretrain=pretrain_gmacs is not None)
  # XLA also counts softmax/GELU/LayerNorm flops; the paper counts matmul MACs only: +-3 %.
  assert abs(r["gmacs"] - gmacs) / gmacs <= 0.03
  if pretrain_gmacs:
    assert abs(r["pretrain_gmacs"] - pretrain_gmacs) / pretrain_gmacs <= 0.05


def test_describe_cli_json():
  out = subprocess.run([sys.executable, "-m", "svfap_jax", "describe", "svfap_tiny", "--json"],
                       capture_output=True, text=True, check=True).stdout
  r = json.loads(out.strip().splitlines()[-1])
  assert r["model"] == "svfap_tiny" and r["params"] > 0 and r["pretrain_gmacs"] < r["gmacs"]
