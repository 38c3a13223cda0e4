"""Where LRP's relevance goes on full-size transformers, ConvNeXt and EfficientNet.

For each model (random weights, float64, one 224x224 image, the arg-max class):

1. with every bias, class/distillation/register token and position embedding set to 0,
   the input relevance of ``PropagationLRP`` (CP-LRP and AttnLRP through attention)
   against the logit: the relative error ``|sum R - logit| / |logit|``;
2. with the model as built, ``PropagationLRP(model).relevance_shares``: the share of
   the logit that reaches the input and the shares the parameters keep.

Writes ``results/transformer_conservation.{json,md}``::

    python benchmarks/transformer_conservation.py     # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from _common import environment, environment_lines, write_results
from torch import Tensor, nn

from captum_fdcam import PropagationLRP
from captum_fdcam.propagation.engine import SHARE_KINDS

RESULTS = Path(__file__).resolve().parent / "results"
#: Parameters that enter by addition and so keep relevance (besides biases).
KEEPERS = (
    "class_token",
    "cls_token",
    "dist_token",
    "reg_token",
    "pos_embedding",
    "pos_embed",
    "position_embeddings",
    "absolute_pos_embed",
)


def _timm(name: str, **kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, **kwargs)


def _hf_vit() -> nn.Module:
    import transformers

    return transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000))


def _tv_vit() -> nn.Module:
    model = torchvision.models.vit_b_16()
    # torchvision starts the head at 0: every logit would be 0.
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


MODELS: dict[str, Callable[[], nn.Module]] = {
    "torchvision vit_b_16": _tv_vit,
    "torchvision swin_t": torchvision.models.swin_t,
    "timm vit_small_patch16_224": lambda: _timm("vit_small_patch16_224"),
    "timm deit_small_distilled_patch16_224": lambda: _timm("deit_small_distilled_patch16_224"),
    "timm vit_small_patch16_224 (4 registers)": lambda: _timm(
        "vit_small_patch16_224", reg_tokens=4, no_embed_class=True
    ),
    "timm swin_tiny_patch4_window7_224": lambda: _timm("swin_tiny_patch4_window7_224"),
    "timm convnext_tiny": lambda: _timm("convnext_tiny"),
    "timm efficientnet_b0": lambda: _timm("efficientnet_b0"),
    "Hugging Face ViT (ViTConfig())": _hf_vit,
}


def zeroed(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            last = name.rsplit(".", 1)[-1]
            if "bias" in last or last in KEEPERS:
                parameter.zero_()
    return model


def logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, Tensor) else out.logits


def measure(name: str, build: Callable[[], nn.Module]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build().double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = int(logits(model, x).argmax())
    row: dict[str, Any] = {"target": target}
    bare = zeroed(copy.deepcopy(model))
    logit = float(logits(bare, x)[0, target])
    row["zeroed_logit"] = logit
    for mode in ("cp", "attnlrp"):
        start = time.perf_counter()
        relevance = PropagationLRP(bare, attention=mode).attribute(x, target=target)
        row[f"zeroed_{mode}_relative_error"] = abs(float(relevance.sum()) - logit) / abs(logit)
        row[f"{mode}_s"] = time.perf_counter() - start
    shares = PropagationLRP(model).relevance_shares(x, target=target)
    row["shares"] = {kind: float(value[0]) for kind, value in shares.items()}
    print(
        f"{name:<42s} zeroed: cp {row['zeroed_cp_relative_error']:.1e}, attnlrp "
        f"{row['zeroed_attnlrp_relative_error']:.1e}; input share "
        f"{row['shares']['end'] / row['shares']['start']:.3f}",
        flush=True,
    )
    return row


SHOWN = [k for k in SHARE_KINDS if k not in ("start", "tokens outside the map")]


def report(rows: dict[str, dict[str, Any]], env: dict[str, Any], total_s: float) -> str:
    lines = [
        "# LRP conservation on full-size transformers, ConvNeXt and EfficientNet",
        "",
        environment_lines(env, total_s),
        "",
        "Random weights, float64, one 224x224 image (seed 1), the arg-max class. "
        "**Zeroed**: every bias, class/distillation/register token and position embedding "
        "set to 0; relative error of the input relevance's sum against the logit, "
        "`PropagationLRP` with `attention='cp'` and `'attnlrp'`. **As built**: "
        "`PropagationLRP(model).relevance_shares` (CP-LRP), each kind as a share of the "
        "logit; the input's share and the others sum to 1.",
        "",
        "| model | logit (zeroed) | rel. error CP | rel. error AttnLRP | "
        + " | ".join(SHOWN)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(SHOWN),
    ]
    for name, row in rows.items():
        start = row["shares"]["start"]
        cells = [f"{row['shares'][k] / start:+.4f}" for k in SHOWN]
        lines.append(
            f"| {name} | {row['zeroed_logit']:.4g} | {row['zeroed_cp_relative_error']:.1e} "
            f"| {row['zeroed_attnlrp_relative_error']:.1e} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        '"end" is the input\'s share (the map\'s sum over the logit); "rules": what z+ and '
        'z^B leave with the layers that have a rule (they ignore biases); "other": '
        "rounding and buffers added in the forward pass. These libraries initialise biases "
        "at 0, so the biases keep nothing here. AttnLRP's error is its softmax rule's "
        "remainder (Proposition 3.1 is not conservative), which takes a part of the "
        "relevance the uniform rule sends to the attention weights: here about half of the "
        "logit on the ViTs; "
        '`relevance_shares` reports it under "other".',
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.threads, args.tune_malloc = 2, False
    torch.set_num_threads(2)
    begin = time.perf_counter()
    env = environment(args, "python benchmarks/transformer_conservation.py")
    rows = {name: measure(name, build) for name, build in MODELS.items()}
    total = time.perf_counter() - begin
    payload = {"environment": env, "models": rows}
    write_results(args.out, "transformer_conservation", payload, report(rows, env, total))
    print(f"wrote {args.out}/transformer_conservation.{{json,md}} ({shlex.join(sys.argv)})")


if __name__ == "__main__":
    main()
