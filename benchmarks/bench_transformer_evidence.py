"""Which explanations localise on a vision transformer: FG-CAM and LRP through attention
against the CAMs, attention rollout and gradient x input, with paired bootstrap CIs.

Two toy tasks, each with a torchvision ``VisionTransformer`` trained here on the CPU (no
pretrained ViT is available offline):

- **squares**: the model and data of ``examples/vit_cam.py`` (32 px images, 8 px patches,
  a 4x4 grid plus the class token, 2 blocks): name the colour of a 4x4 px square placed
  in one of the 16 patches. Scored by the pointing game against the square's patch: a
  token map (the CAMs, rollout) by its maximum cell, a pixel map (FG-CAM to the pixels,
  LRP, gradient x input) by the patch with the largest positive relevance (the same
  cells; the pixel maximum is reported beside it). Chance is 1/16.
- **scenes**: 64 px images, 8 px patches (8x8 tokens, 4 blocks): one filled 7x7 px
  square whose colour (of 4) is the class, and three hollow 7x7 px squares of random
  colours (the target's colour included) as distractors, at random positions, never
  touching. Ground truth: the filled square's pixel mask. Scores per image, every map
  brought to 64x64 px (token maps by bilinear upsampling, as Captum does):
  - pointing: every maximal pixel of the map within 4 px of the mask (Zhang et al.'s
    tolerance, 15 px at 224, scaled; an upsampled map's tied 2x2 top counts, a constant
    map never); chance is the dilated mask's share of the image;
  - mass in mask: the share of the map's positive relevance inside the mask
    (``quantus.RelevanceMassAccuracy`` on the positive part; 0 for an all-zero map);
  - insertion (blurred start) and deletion (zeros) AUC of the softmax score,
    ``captum_fdcam.evaluation.Insertion`` / ``Deletion``, 2 rows (128 px) a step.

Methods, each explaining the true class with its defaults, at the first and the last
block's ``ln_1`` (``reshape_transform=TokensToGrid()``, ``relu_attributions=True`` for
the CAMs): Grad-CAM, Score-CAM, Ablation-CAM, FD-CAM; FG-Grad-CAM and FG-Score-CAM from
those layers to the pixels (``FGCam``, CP-LRP through attention, signed maps); LRP to
the pixels (``PropagationLRP``, ``attention="cp"`` and ``"attnlrp"``); Captum's
``InputXGradient``; attention rollout (Abnar & Zuidema 2020: heads averaged,
0.5 A + 0.5 I, multiplied over the blocks, the class token's row over the patches).

Diagnostics (squares task), to say *why* a method fails:

- the CAM's channel weights: the same activations with the weights of Grad-CAM taken
  from the CP-LRP gradient (the mean over the patch tokens of the gradient of the
  changed graph, recovered as relevance / activation with gradient x input rules);
- the class token at the last block: the share of the LRP relevance at the last
  block's ``ln_1`` held by the class token, and the pointing game of that relevance
  propagated to the pixels from the class token alone and from the patch tokens alone;
- where FG-Grad-CAM's start relevance ends (``FGCam.relevance_shares``);
- Ablation-CAM with three "off" values: 0 (the paper), the LayerNorm's bias and the
  patch tokens' mean (a naive loop, checked equal to the library's at 0).

Every comparison is a paired per-image difference with a percentile bootstrap 95% CI
(``captum_fdcam.evaluation.paired``, 2000 resamples, seed 0); a difference is claimed
only where the CI excludes 0. Writes ``results/transformer_evidence.{json,md}``
(``--quick``: ``transformer_evidence_quick.*``)::

    python benchmarks/bench_transformer_evidence.py           # ~12 min on 2 cores
    python benchmarks/bench_transformer_evidence.py --quick   # smoke run, ~1 min

Everything is seeded and runs on one thread per op set by ``torch.set_num_threads(2)``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from _common import environment, environment_lines, write_results
from captum.attr import InputXGradient
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import Tensor, nn

from captum_fdcam import (
    ConstantMapWarning,
    FGCam,
    LayerAblationCam,
    LayerFDCam,
    LayerGradCam,
    LayerScoreCam,
    PropagationLRP,
)
from captum_fdcam.evaluation import Deletion, Insertion
from captum_fdcam.evaluation.paired import (
    MIN_CLAIM_N,
    SAMPLES,
    SEED,
    bootstrap_mean_ci,
    claimed,
    interval,
    paired,
)
from captum_fdcam.propagation import RuleAssignment, ZBoxRule, propagate
from captum_fdcam.reshape import TokensToGrid
from captum_fdcam.visualization import upsample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import vit_cam  # the example's model and data

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 50
#: The scenes task: classes' colours, image and object sizes, distractors.
SCENE_COLOURS = torch.tensor(
    [[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0]]
)
SCENE, SCENE_PATCH, OBJECT, DISTRACTORS, TOLERANCE = 64, 8, 7, 3, 4
PIXELS_PER_STEP = 2 * SCENE
#: Seeds: model, training batches, held-out images.
MODEL_SEED, TRAIN_SEED, TEST_SEED = 0, 1, 5
CAMS = {
    "Grad-CAM": LayerGradCam,
    "Score-CAM": LayerScoreCam,
    "Ablation-CAM": LayerAblationCam,
    "FD-CAM": LayerFDCam,
}
FINE = ("Grad-CAM", "Score-CAM")
DEPTHS = ("first", "last")
LRP_CP, LRP_ATTN, GXI, ROLLOUT = (
    "LRP (CP)",
    "LRP (AttnLRP)",
    "gradient x input",
    "attention rollout",
)


def cam_name(method: str, depth: str) -> str:
    return f"{method} ({depth} block)"


def fg_name(method: str, depth: str) -> str:
    return f"FG-{method} ({depth} block)"


#: (method, reference) pairs every task reports, in this order.
COMPARISONS = [
    *[(fg_name(m, d), cam_name(m, d)) for m in FINE for d in DEPTHS],
    *[(fg_name(m, "first"), fg_name(m, "last")) for m in FINE],
    (LRP_ATTN, LRP_CP),
    (GXI, cam_name("Score-CAM", "first")),
    (GXI, ROLLOUT),
    # LRP against every other method
    *[(LRP_CP, cam_name(m, d)) for d in DEPTHS for m in CAMS],
    *[(LRP_CP, fg_name(m, d)) for d in DEPTHS for m in FINE],
    (LRP_CP, GXI),
    (LRP_CP, ROLLOUT),
]


# --------------------------------------------------------------------------- data


def scenes(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` scenes: images, labels (the filled square's colour) and (N, 1, H, W) masks."""
    x = 0.4 * torch.randn(n, 3, SCENE, SCENE, generator=generator)
    labels = torch.randint(len(SCENE_COLOURS), (n,), generator=generator)
    masks = torch.zeros(n, 1, SCENE, SCENE, dtype=torch.bool)
    for i in range(n):
        corners: list[tuple[int, int]] = []
        while len(corners) < 1 + DISTRACTORS:  # rejection: objects never touch
            top, left = torch.randint(0, SCENE - OBJECT + 1, (2,), generator=generator).tolist()
            if all(abs(top - t) > OBJECT or abs(left - u) > OBJECT for t, u in corners):
                corners.append((top, left))
        for j, (top, left) in enumerate(corners):
            box = (slice(top, top + OBJECT), slice(left, left + OBJECT))
            if j == 0:
                x[i, :, box[0], box[1]] = 1.5 * SCENE_COLOURS[labels[i]][:, None, None]
                masks[i, 0, box[0], box[1]] = True
            else:
                colour = SCENE_COLOURS[
                    int(torch.randint(len(SCENE_COLOURS), (1,), generator=generator))
                ]
                x[i, :, box[0], box[1]] = 1.5 * colour[:, None, None]
                hole = (slice(top + 2, top + OBJECT - 2), slice(left + 2, left + OBJECT - 2))
                x[i, :, hole[0], hole[1]] = 0.4 * torch.randn(
                    3, OBJECT - 4, OBJECT - 4, generator=generator
                )
    return x, labels, masks


def train_scenes(steps: int) -> nn.Module:
    torch.manual_seed(MODEL_SEED)
    vit = torchvision.models.VisionTransformer(
        image_size=SCENE,
        patch_size=SCENE_PATCH,
        num_layers=4,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=len(SCENE_COLOURS),
    )
    # As examples/vit_cam.py: torchvision's zero head trains slowly.
    nn.init.normal_(vit.heads.head.weight, std=0.02)
    optimiser = torch.optim.Adam(vit.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    for _ in range(steps):
        x, labels, _ = scenes(64, generator)
        loss = F.cross_entropy(vit(x), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return vit.eval()


# --------------------------------------------------------------------------- methods


def block_norms(vit: nn.Module) -> dict[str, nn.Module]:
    layers = vit.encoder.layers
    return {"first": layers[0].ln_1, "last": layers[-1].ln_1}


def rollout(vit: nn.Module, x: Tensor) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020) as a (N, 1, h, w) token map."""
    inputs: list[Tensor] = []
    hooks = [
        block.ln_1.register_forward_hook(lambda _m, _i, out: inputs.append(out.detach()))
        for block in vit.encoder.layers
    ]
    try:
        with torch.no_grad():
            vit(x)
            joint = None
            for block, y in zip(vit.encoder.layers, inputs, strict=True):
                _, weights = block.self_attention(y, y, y, need_weights=True)
                eye = torch.eye(weights.shape[-1], dtype=weights.dtype)
                step = 0.5 * weights + 0.5 * eye
                step = step / step.sum(-1, keepdim=True)
                joint = step if joint is None else step @ joint
    finally:
        for hook in hooks:
            hook.remove()
    assert joint is not None
    row = joint[:, 0, 1:]
    side = int(row.shape[-1] ** 0.5)
    return row.reshape(len(x), 1, side, side)


def explainers(vit: nn.Module) -> dict[str, tuple[str, Callable[[Tensor, Tensor], Tensor]]]:
    """Method name -> (kind, maps of a batch): "token" maps (N, 1, h, w) on the patch
    grid, or "pixel" maps (N, C, H, W) like the input."""
    out: dict[str, tuple[str, Callable[[Tensor, Tensor], Tensor]]] = {}
    for depth, layer in block_norms(vit).items():
        for method, cls in CAMS.items():
            cam = cls(vit, layer, reshape_transform=TokensToGrid())
            out[cam_name(method, depth)] = (
                "token",
                lambda x, y, cam=cam: cam.attribute(x, target=y, relu_attributions=True),
            )
    for depth, layer in block_norms(vit).items():
        for method in FINE:
            fg = FGCam(CAMS[method](vit, layer, reshape_transform=TokensToGrid()))
            out[fg_name(method, depth)] = ("pixel", lambda x, y, fg=fg: fg.attribute(x, target=y))
    cp, attn = PropagationLRP(vit), PropagationLRP(vit, attention="attnlrp")
    out[LRP_CP] = ("pixel", lambda x, y: cp.attribute(x, target=y))
    out[LRP_ATTN] = ("pixel", lambda x, y: attn.attribute(x, target=y))
    gxi = InputXGradient(vit)
    out[GXI] = ("pixel", lambda x, y: gxi.attribute(x.clone(), target=y))
    out[ROLLOUT] = ("token", lambda x, y: rollout(vit, x))
    return out


def run_method(
    explain: Callable[[Tensor, Tensor], Tensor], x: Tensor, labels: Tensor
) -> tuple[Tensor, float, int]:
    """Maps of all images in batches, seconds per image, ConstantMapWarning count."""
    parts, seconds, warned = [], 0.0, 0
    for xs, ys in zip(x.split(BATCH), labels.split(BATCH), strict=True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConstantMapWarning)
            start = time.perf_counter()
            maps = explain(xs, ys)
            seconds += time.perf_counter() - start
        warned += sum(issubclass(w.category, ConstantMapWarning) for w in caught)
        parts.append(maps.detach().float())
    return torch.cat(parts), seconds / len(x), warned


# --------------------------------------------------------------------------- scoring


def maxima(flat: Tensor) -> tuple[Tensor, Tensor]:
    """Of each row of (N, P): which entries are maximal, and whether the row is constant."""
    top = flat.max(dim=1, keepdim=True).values
    return flat == top, flat.min(1).values == top.squeeze(1)


def points_into(flat: Tensor, inside: Tensor) -> tuple[Tensor, Tensor]:
    """Pointing hits of (N, P) maps: every maximal entry inside ``inside`` (N, P) (a tie
    inside counts, as an upsampled map's 2x2 top does; a constant map never hits), and
    which maps are constant."""
    top, constant = maxima(flat)
    return (top <= inside).all(1) & ~constant, constant


def patch_cells(maps: Tensor, kind: str, patch: int) -> Tensor:
    """A map as (N, cells) on the patch grid: token maps as they are, pixel maps as the
    positive relevance summed per patch."""
    if kind == "token":
        return maps.flatten(1)
    positive = maps.sum(1, keepdim=True).clamp(min=0)
    return F.avg_pool2d(positive, patch).flatten(1)


def cell_masks(patches: Tensor, size: int) -> Tensor:
    """(N, size * size) masks of the square's patch, on a grid of ``size`` per side
    (the 4x4 patch grid, or the pixels)."""
    grid, scale = vit_cam.GRID, size // vit_cam.GRID
    row, col = patches // grid, patches % grid
    ys = torch.arange(size)[None, :, None] // scale
    xs = torch.arange(size)[None, None, :] // scale
    return ((ys == row[:, None, None]) & (xs == col[:, None, None])).flatten(1)


def token_hits(tokens: Tensor, patches: Tensor) -> list[float]:
    """Pointing game of (N, 16) patch-grid maps against the square's patch."""
    hit, _ = points_into(tokens.flatten(1), cell_masks(patches, vit_cam.GRID))
    return hit.double().tolist()


def score_squares(maps: Tensor, kind: str, patches: Tensor) -> dict[str, list]:
    cells = patch_cells(maps, kind, vit_cam.PATCH)
    hit, constant = points_into(cells, cell_masks(patches, vit_cam.GRID))
    scores: dict[str, list] = {"pointing": hit.double().tolist(), "constant": constant.tolist()}
    if kind == "pixel":
        side = vit_cam.GRID * vit_cam.PATCH
        pixel_hit, _ = points_into(maps.sum(1).flatten(1), cell_masks(patches, side))
        scores["pixel pointing"] = pixel_hit.double().tolist()
    return scores


def full_size(maps: Tensor, kind: str) -> Tensor:
    """(N, 1, H, W) maps at the scene's size."""
    if kind == "token":
        return upsample(maps, (SCENE, SCENE))
    return maps.sum(1, keepdim=True)


def score_scenes(vit: nn.Module, x: Tensor, labels: Tensor, masks: Tensor, maps: Tensor) -> dict:
    import quantus

    near = F.max_pool2d(masks.float(), 2 * TOLERANCE + 1, stride=1, padding=TOLERANCE)
    hit, constant = points_into(maps.flatten(1).double(), near.flatten(1).bool())
    positive = maps.clamp(min=0).numpy()
    quiet = {"disable_warnings": True, "display_progressbar": False}
    with np.errstate(invalid="ignore", divide="ignore"):
        mass = quantus.RelevanceMassAccuracy(abs=False, normalise=False, **quiet)(
            model=vit,
            x_batch=x.numpy(),
            y_batch=labels.numpy(),
            a_batch=positive,
            s_batch=masks.numpy().astype(np.float32),
            device="cpu",
        )
    mass = [0.0 if np.isnan(v) else float(v) for v in mass]  # no positive relevance
    curves = {}
    for name, metric in (
        ("insertion", Insertion(pixels_per_step=PIXELS_PER_STEP, **quiet)),
        ("deletion", Deletion(pixels_per_step=PIXELS_PER_STEP, **quiet)),
    ):
        curves[name] = [
            float(v)
            for v in metric(
                model=vit,
                x_batch=x.numpy(),
                y_batch=labels.numpy(),
                a_batch=maps.numpy(),
                device="cpu",
            )
        ]
    return {
        "pointing": hit.double().tolist(),
        "mass in mask": mass,
        **curves,
        "constant": constant.tolist(),
    }


# --------------------------------------------------------------------------- diagnostics


def layer_output(vit: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    found: list[Tensor] = []
    hook = layer.register_forward_hook(lambda _m, _i, out: found.append(out.detach()))
    try:
        with torch.no_grad():
            vit(x)
    finally:
        hook.remove()
    return found[0]


def target_logits(labels: Tensor) -> Callable[[Tensor], Tensor]:
    def start(out: Tensor) -> Tensor:
        mask = torch.zeros_like(out)
        mask[torch.arange(len(out)), labels] = 1
        return mask * out

    return start


def pixel_hits(relevance: Tensor, patches: Tensor) -> list[float]:
    return score_squares(relevance, "pixel", patches)["pointing"]


def diagnostics(vit: nn.Module, x: Tensor, labels: Tensor, patches: Tensor, shares_n: int) -> dict:
    """The squares task's diagnostics (float64 for the divisions); see the docstring."""
    vit = vit.double()
    x = x.double()
    ours = RuleAssignment(None, ZBoxRule(), "cp")
    plain = RuleAssignment(
        {nn.Linear: lambda: EpsilonRule(0), nn.Conv2d: lambda: EpsilonRule(0)}, EpsilonRule(0), "cp"
    )
    out: dict[str, Any] = {}
    for depth, layer in block_norms(vit).items():
        a = layer_output(vit, layer, x)
        # CP-LRP gradient at the layer: relevance / activation under gradient x input rules.
        (r,) = propagate(vit, plain, (x,), None, target_logits(labels), None, layer)
        gradient = r / a
        weights = gradient[:, 1:].mean(1, keepdim=True)
        cp_cam = torch.relu((weights * a[:, 1:]).sum(-1))
        true_cam = LayerGradCam(vit, layer, reshape_transform=TokensToGrid()).attribute(
            x, target=labels, relu_attributions=True
        )
        (lrp,) = propagate(vit, ours, (x,), None, target_logits(labels), None, layer)
        per_token = lrp.sum(-1).abs()
        class_share = per_token[:, 0] / per_token.sum(1)
        parts = {}
        for part, keep in (("class token", 0), ("patch tokens", 1)):
            start = lrp.clone()
            if keep == 0:
                start[:, 1:] = 0
            else:
                start[:, 0] = 0
            (pixels,) = propagate(vit, ours, (x,), None, lambda _out, s=start: s, layer, None)
            parts[part] = pixel_hits(pixels.float(), patches)
        off = ablation_offs(vit, layer, x, labels, patches)
        fg = FGCam(LayerGradCam(vit, layer, reshape_transform=TokensToGrid()))
        shares = fg.relevance_shares(x[:shares_n], target=labels[:shares_n])
        out[depth] = {
            "Grad-CAM, true gradient": token_hits(true_cam.flatten(1), patches),
            "Grad-CAM, CP-LRP gradient": token_hits(cp_cam, patches),
            "LRP relevance at the layer, per patch token": token_hits(lrp[:, 1:].sum(-1), patches),
            "class token's share of the LRP relevance (|R| per token)": class_share.tolist(),
            "LRP from the layer, class token only": parts["class token"],
            "LRP from the layer, patch tokens only": parts["patch tokens"],
            **off,
            "FG-Grad-CAM shares": {k: v.tolist() for k, v in shares.items()},
        }
    vit.float()
    return out


def ablation_offs(
    vit: nn.Module, layer: nn.Module, x: Tensor, labels: Tensor, patches: Tensor
) -> dict:
    """Ablation-CAM's pointing with channel k of the patch tokens set to 0, to the
    LayerNorm's bias, or to the patch tokens' mean, one channel at a time (naive loop)."""
    a = layer_output(vit, layer, x)
    rows = torch.arange(len(x))
    with torch.no_grad():
        reference = vit(x)[rows, labels]
    offs = {
        "0": torch.zeros_like(a[:, :1]),
        "LayerNorm bias": layer.bias.detach().expand_as(a[:, :1]),
        "patch tokens' mean": a[:, 1:].mean(1, keepdim=True),
    }
    out: dict[str, Any] = {}
    for name, value in offs.items():
        weights = torch.zeros(a.shape[0], a.shape[-1], dtype=a.dtype)
        for k in range(a.shape[-1]):

            def switch(
                _m: nn.Module, _i: Any, output: Tensor, k: int = k, value: Tensor = value
            ) -> Tensor:
                changed = output.clone()
                changed[:, 1:, k] = value[:, :, k]
                return changed

            hook = layer.register_forward_hook(switch)
            try:
                with torch.no_grad():
                    score = vit(x)[rows, labels]
            finally:
                hook.remove()
            weights[:, k] = (reference - score) / reference
        cam = torch.relu((weights[:, None] * a[:, 1:]).sum(-1))
        if name == "0":
            library = LayerAblationCam(vit, layer, reshape_transform=TokensToGrid()).attribute(
                x, target=labels, relu_attributions=True
            )
            out["naive Ablation-CAM (off 0) - library, max abs"] = float(
                (library.flatten(1) - cam).abs().max()
            )
        out[f"Ablation-CAM, off = {name}"] = token_hits(cam, patches)
    return out


# --------------------------------------------------------------------------- statistics


def mean_ci(values: list[float]) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_mean_ci(array)
    return {"mean": float(array.mean()), "ci95": [low, high], "n": len(array)}


def paired_rows(methods: dict[str, dict], metrics: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for method, reference in COMPARISONS:
        row: dict[str, Any] = {"method": method, "reference": reference}
        for metric, better in metrics.items():
            if (
                metric not in methods[method]["scores"]
                or metric not in methods[reference]["scores"]
            ):
                row[metric] = None  # a token map has no pixel arg-max
                continue
            a = dict(enumerate(methods[method]["scores"][metric]))
            b = dict(enumerate(methods[reference]["scores"][metric]))
            row[metric] = paired(a, b, better)
        rows.append(row)
    return rows


def run_task(
    name: str,
    vit: nn.Module,
    x: Tensor,
    labels: Tensor,
    score: Callable[[Tensor, str], dict[str, list]],
    metrics: dict[str, str],
) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    for method, (kind, explain) in explainers(vit).items():
        maps, seconds, warned = run_method(explain, x, labels)
        scores = score(maps, kind)
        methods[method] = {
            "kind": kind,
            "s_per_image": seconds,
            "constant_map_warnings": warned,
            "constant": int(sum(scores.pop("constant"))),
            "scores": scores,
            "summary": {m: mean_ci(v) for m, v in scores.items()},
        }
        text = ", ".join(f"{m} {s['mean']:.3f}" for m, s in methods[method]["summary"].items())
        print(f"  [{name}] {method:<30s} {text} ({seconds * 1000:.1f} ms/image)", flush=True)
    return {"methods": methods, "paired": paired_rows(methods, metrics)}


# --------------------------------------------------------------------------- report


def verdict(row: dict[str, Any] | None, better: str) -> str:
    if row is None:
        return "—"
    if row["ties"] == row["n"]:
        return "equal on every image"
    if not claimed(row):
        return f"not shown either way at n = {row['n']}"
    good = row["mean"] > 0 if better == "higher" else row["mean"] < 0
    return "**better**" if good else "**worse**"


def chance_word(summary: dict[str, Any], chance: float) -> str:
    low, high = summary["ci95"]
    if low > chance:
        return "above"
    if high < chance:
        return "below"
    return "not shown either way"


def fmt_ci(summary: dict[str, Any]) -> str:
    low, high = summary["ci95"]
    return f"{summary['mean']:.3f} [{low:.3f}, {high:.3f}]"


def method_table(task: dict[str, Any], metrics: dict[str, str], chance: float) -> list[str]:
    names = list(metrics)
    lines = [
        "| method | "
        + " | ".join(f"{m} [95% CI]" for m in names)
        + " | pointing vs chance | constant maps | ms / image |",
        "|---|" + "---|" * len(names) + "---|---:|---:|",
    ]
    for method, row in task["methods"].items():
        cells = [fmt_ci(row["summary"][m]) if m in row["summary"] else "—" for m in names]
        lines.append(
            f"| {method} | "
            + " | ".join(cells)
            + f" | {chance_word(row['summary']['pointing'], chance)} | {row['constant']} "
            f"| {row['s_per_image'] * 1000:.1f} |"
        )
    return lines


def paired_table(task: dict[str, Any], metrics: dict[str, str]) -> list[str]:
    lines = [
        "| method - reference | metric | difference [95% CI] | w/l/t | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in task["paired"]:
        for metric, better in metrics.items():
            diff = row[metric]
            if diff is None:
                continue
            mark = "**" if claimed(diff) else ""
            lines.append(
                f"| {row['method']} - {row['reference']} | {metric} | {mark}{interval(diff, 3)}"
                f"{mark} | {diff['wins']}/{diff['losses']}/{diff['ties']} "
                f"| {verdict(diff, better)} |"
            )
    return lines


def diagnostics_lines(diag: dict[str, Any]) -> list[str]:
    lines = [
        "| diagnostic (squares task) | first block | last block |",
        "|---|---|---|",
    ]
    for key, value in diag["first"].items():
        if key == "FG-Grad-CAM shares" or not isinstance(value, list):
            continue
        cells = [fmt_ci(mean_ci(diag[d][key])) for d in DEPTHS]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    key = "naive Ablation-CAM (off 0) - library, max abs"
    lines.append(f"| {key} | " + " | ".join(f"{diag[d][key]:.2e}" for d in DEPTHS) + " |")
    lines += ["", "Where FG-Grad-CAM's start relevance ends (mean over images; float64):", ""]
    kinds = list(diag["first"]["FG-Grad-CAM shares"])
    lines += ["| kind | first block | last block |", "|---|---|---|"]
    for kind in kinds:
        cells = [f"{np.mean(diag[d]['FG-Grad-CAM shares'][kind]):+.4g}" for d in DEPTHS]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


SQUARE_METRICS = {"pointing": "higher", "pixel pointing": "higher"}
SCENE_METRICS = {
    "pointing": "higher",
    "mass in mask": "higher",
    "insertion": "higher",
    "deletion": "lower",
}


def report(payload: dict[str, Any], env: dict[str, Any], total_s: float) -> str:
    sq, sc = payload["squares"], payload["scenes"]
    lines = [
        "# Explanations on a vision transformer: FG-CAM and LRP through attention",
        "",
        environment_lines(env, total_s),
        "",
        "See the script's docstring for the tasks, the methods and the scores. Means with "
        f"percentile bootstrap 95% CIs ({SAMPLES} resamples, seed {SEED}); paired rows are "
        "the mean per-image difference (method - reference) with its CI and wins/losses/ties; "
        f"a difference is claimed (bold) only where the CI excludes 0 (n >= {MIN_CLAIM_N}). "
        "Pointing: a hit needs every maximal entry of the map inside the target (an "
        "upsampled map's tied 2x2 top can hit); a constant map is a miss, and counted. "
        "Time: wall time per image in batches of "
        f"{BATCH} on a shared machine (context, not a benchmark).",
        "",
        f"## Squares (`examples/vit_cam.py`): n = {sq['n']}, held-out accuracy "
        f"{sq['accuracy']:.3f}, chance 1/16",
        "",
        *method_table(sq, SQUARE_METRICS, 1 / 16),
        "",
        *paired_table(sq, {"pointing": "higher"}),
        "",
        "### Why: diagnostics",
        "",
        *diagnostics_lines(sq["diagnostics"]),
        "",
        f"## Scenes with distractors: n = {sc['n']}, held-out accuracy {sc['accuracy']:.3f}, "
        f"pointing chance {sc['chance']:.3f} (the dilated mask's mean share of the image)",
        "",
        *method_table(sc, SCENE_METRICS, sc["chance"]),
        "",
        *paired_table(sc, SCENE_METRICS),
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def rewrite_report(args: argparse.Namespace) -> None:
    """The paired rows and the markdown again, from the per-image scores of a run."""
    import json

    stem = "transformer_evidence" + "_quick" * args.quick
    payload = json.loads((args.out / f"{stem}.json").read_text())
    for task, metrics in (("squares", SQUARE_METRICS), ("scenes", SCENE_METRICS)):
        payload[task]["paired"] = paired_rows(payload[task]["methods"], metrics)
    total = payload.get("total_s", 0.0)
    write_results(args.out, stem, payload, report(payload, payload["environment"], total))
    print(f"rewrote {args.out / stem}.{{json,md}} from the saved scores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short training, few images")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="recompute the paired rows and the report from the saved JSON (no model runs)",
    )
    args = parser.parse_args()
    if args.report_only:
        rewrite_report(args)
        return
    torch.set_num_threads(2)
    begin = time.perf_counter()
    n = 24 if args.quick else 200
    args.threads, args.tune_malloc = 2, False
    env = environment(
        args, "python benchmarks/bench_transformer_evidence.py" + " --quick" * args.quick
    )

    print("squares: training the example's ViT", flush=True)
    vit = vit_cam.train(150 if args.quick else 400)
    x, labels, patches = vit_cam.squares(n, torch.Generator().manual_seed(TEST_SEED))
    with torch.no_grad():
        accuracy = float((vit(x).argmax(1) == labels).float().mean())
    squares_task = run_task(
        "squares",
        vit,
        x,
        labels,
        lambda maps, kind: score_squares(maps, kind, patches),
        SQUARE_METRICS,
    )
    squares_task.update(n=n, accuracy=accuracy)
    print("squares: diagnostics", flush=True)
    squares_task["diagnostics"] = diagnostics(vit, x, labels, patches, min(n, 50))

    print("scenes: training", flush=True)
    vit = train_scenes(150 if args.quick else 1000)
    x, labels, masks = scenes(n, torch.Generator().manual_seed(TEST_SEED))
    with torch.no_grad():
        accuracy = float((vit(x).argmax(1) == labels).float().mean())
    near = F.max_pool2d(masks.float(), 2 * TOLERANCE + 1, stride=1, padding=TOLERANCE)
    scenes_task = run_task(
        "scenes",
        vit,
        x,
        labels,
        lambda maps, kind: score_scenes(vit, x, labels, masks, full_size(maps, kind)),
        SCENE_METRICS,
    )
    scenes_task.update(n=n, accuracy=accuracy, chance=float(near.mean()))

    total = time.perf_counter() - begin
    payload = {"environment": env, "squares": squares_task, "scenes": scenes_task, "total_s": total}
    stem = "transformer_evidence" + "_quick" * args.quick
    write_results(args.out, stem, payload, report(payload, env, total))
    print(f"wrote {args.out / stem}.{{json,md}} in {total / 60:.1f} min ({shlex.join(sys.argv)})")


if __name__ == "__main__":
    main()
