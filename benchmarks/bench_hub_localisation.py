"""Which CAMs localise on hub transformers: pointing game and energy share on a toy task.

Four small transformer classifiers built from the hubs' own classes (random initial
weights, trained here on the CPU; no download) learn the toy task of
``examples/vit_cam.py``: name the colour (red, green or blue) of a 4x4 px square placed
in one 8x8 px patch of a noisy 32x32 px image. Here the square's offset inside its patch
is random, and a white square of the same size (a distractor, in another patch) is in
every image, so that a map has to find the square of the class, not any bright square.

- ``timm-vit``: ``timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
  embed_dim=32, depth=2, num_heads=2)``: a class token and 4x4 patch tokens;
- ``timm-vit-reg4``: the same with ``reg_tokens=4`` (5 prefix tokens);
- ``timm-swin``: ``swin_tiny_patch4_window7_224`` with ``img_size=32, embed_dim=32,
  depths=(2, 2), num_heads=(2, 4), window_size=4``: 8x8 tokens of 4 px, merged once into
  4x4 cells of 8 px at the final norm;
- ``hf-vit``: Hugging Face ``ViTForImageClassification(ViTConfig(image_size=32,
  patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
  intermediate_size=64))`` (its output is an ``ImageClassifierOutput``).

Each model is trained for ``--steps`` steps (2000: Adam, lr 1e-3 with cosine decay, fresh
batches of 64 images; validation accuracy on 500 images every 250 steps), then its
held-out accuracy is measured on 1000 other images (the report flags a model below 90%:
its maps are not worth reading). On the first ``--n`` of those (200; a fixed seed) every CAM of
``captum_fdcam.METHODS`` explains the true class at ``default_layer(model)`` with
``reshape_transform="auto"`` and ``relu_attributions=True``, with each method's default
settings. Each map (4x4 on every model) is scored at its own resolution:

- pointing game: 1 if the map's maximum is in the square's cell. A tie for the maximum
  counts as a hit only if every maximal cell is the square's cell, i.e. never (one cell);
  ties are counted apart, and a constant map (``ConstantMapWarning``) is a tie, so a miss;
- energy: the share of the map's positive mass in the square's cell (0 for a map with no
  positive mass, which is an all-zero map after ``relu_attributions``). Chance is 1/16
  for both (a uniform map scores 1/16 energy).

Per model and method: the mean of each score with a percentile bootstrap 95% CI, and the
paired per-image difference against Grad-CAM with its CI (``bootstrap_mean_ci`` of
``captum_fdcam.evaluation.paired``, 2000 resamples, seed 0), worded as the project words
results; the constant maps (the maps' own count, and the ``ConstantMapWarning`` calls);
each map's floor (min / max, as ``benchmarks/map_floor.py``); how often the unique maximum
is the distractor's cell; the wall time per image of each method (batches of 50, one
thread; context, not a benchmark). Writes ``results/hub_localisation.{json,md}`` (``--quick``:
``hub_localisation_quick.*``)::

    python benchmarks/bench_hub_localisation.py            # ~4 min on 2 shared cores
    python benchmarks/bench_hub_localisation.py --quick    # smoke run, ~15 s

Everything is seeded (one thread), so a rerun gives the same models and scores. Each
model's weights and scores are kept in ``--cache`` (default
``/tmp/hub_localisation_cache``): a rerun with the same settings resumes from there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import environment, environment_lines, version, write_results
from torch import Tensor, nn

from captum_fdcam import METHODS, ConstantMapWarning
from captum_fdcam.architectures import default_layer
from captum_fdcam.evaluation.paired import (
    MIN_CLAIM_N,
    SAMPLES,
    SEED,
    bootstrap_mean_ci,
    claimed,
    interval,
    paired,
)

#: The classes' colours (red, green, blue) and the distractor's (white), per channel.
COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
DISTRACTOR = torch.tensor([1.0, 1.0, 1.0])
GRID, PATCH, SQUARE = 4, 8, 4
IMAGE = GRID * PATCH
CHANCE = 1 / (GRID * GRID)
MODELS = ("timm-vit", "timm-vit-reg4", "timm-swin", "hf-vit")
REFERENCE = "Grad-CAM"
METRICS = {"pointing": "pointing game (hit rate)", "energy": "energy in the square's cell"}
#: Seeds: model initialisation, training batches, validation set, held-out set.
MODEL_SEED, TRAIN_SEED, VALIDATION_SEED, TEST_SEED = 0, 1, 3, 5
LOG_EVERY = 250
#: Below this held-out accuracy the report says the maps are not worth reading.
MIN_ACCURACY = 0.9
BATCH = 64
EXPLAIN_BATCH = 50


# --------------------------------------------------------------------------- data


def squares(n: int, generator: torch.Generator) -> dict[str, Tensor]:
    """``n`` noisy images, each with a square of a class colour in one patch and a white
    square in another, both at a random offset inside their patch: images, labels, the
    square's patch and the distractor's patch (row-major on the 4x4 grid), and the
    top-left pixels of the square and of the distractor."""
    x = 0.5 * torch.randn(n, 3, IMAGE, IMAGE, generator=generator)
    labels = torch.randint(len(COLOURS), (n,), generator=generator)
    patches = torch.randint(GRID * GRID, (n,), generator=generator)
    # Another patch for the distractor: a shift of 1..15 cells, modulo 16.
    shifts = torch.randint(1, GRID * GRID, (n,), generator=generator)
    distractors = (patches + shifts) % (GRID * GRID)
    offsets = torch.randint(PATCH - SQUARE + 1, (n, 4), generator=generator)
    corners = torch.zeros(n, 2, 2, dtype=torch.long)
    for i in range(n):
        for k, (patch, (dy, dx), colour) in enumerate(
            (
                (patches[i], offsets[i, :2], COLOURS[labels[i]]),
                (distractors[i], offsets[i, 2:], DISTRACTOR),
            )
        ):
            row, col = divmod(int(patch), GRID)
            top, left = row * PATCH + int(dy), col * PATCH + int(dx)
            x[i, :, top : top + SQUARE, left : left + SQUARE] = 1.5 * colour[:, None, None]
            corners[i, k] = torch.tensor([top, left])
    return {
        "x": x,
        "labels": labels,
        "patches": patches,
        "distractors": distractors,
        "corners": corners[:, 0],
        "distractor_corners": corners[:, 1],
    }


def cell_of(corners: Tensor, map_size: tuple[int, int]) -> Tensor:
    """The map cell (row-major index) holding each square's centre, at the map's
    resolution: each cell covers IMAGE / h x IMAGE / w pixels."""
    h, w = map_size
    centre = corners.float() + SQUARE / 2 - 0.5
    rows = (centre[:, 0] * h / IMAGE).floor().long().clamp(0, h - 1)
    cols = (centre[:, 1] * w / IMAGE).floor().long().clamp(0, w - 1)
    return rows * w + cols


# --------------------------------------------------------------------------- models


def build(name: str) -> nn.Module:
    torch.manual_seed(MODEL_SEED)
    if name.startswith("timm-"):
        import timm

        common = {"pretrained": False, "img_size": IMAGE, "num_classes": len(COLOURS)}
        if name == "timm-swin":
            return timm.create_model(
                "swin_tiny_patch4_window7_224",
                patch_size=4,
                embed_dim=32,
                depths=(2, 2),
                num_heads=(2, 4),
                window_size=4,
                **common,
            )
        extra = {"reg_tokens": 4} if name == "timm-vit-reg4" else {}
        return timm.create_model(
            "vit_tiny_patch16_224",
            patch_size=PATCH,
            embed_dim=32,
            depth=2,
            num_heads=2,
            **common,
            **extra,
        )
    if name == "hf-vit":
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(
            image_size=IMAGE,
            patch_size=PATCH,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=len(COLOURS),
        )
        return ViTForImageClassification(config)
    raise ValueError(f"unknown model {name!r}")


def logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def accuracy(model: nn.Module, data: dict[str, Tensor]) -> tuple[float, Tensor]:
    with torch.no_grad():
        predicted = torch.cat([logits(model, c).argmax(1) for c in data["x"].split(250)])
    correct = predicted == data["labels"]
    return float(correct.float().mean()), correct


def train(name: str, steps: int, validation: dict[str, Tensor]) -> tuple[nn.Module, dict]:
    """``steps`` steps of Adam (lr 1e-3, cosine decay to 0) on fresh batches of 64,
    with the validation accuracy every ``LOG_EVERY`` steps."""
    model = build(name)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    start = time.perf_counter()
    history = []
    model.train()
    for step in range(1, steps + 1):
        batch = squares(BATCH, generator)
        loss = F.cross_entropy(logits(model, batch["x"]), batch["labels"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % LOG_EVERY == 0 or step == steps:
            model.eval()
            val_acc, _ = accuracy(model, validation)
            model.train()
            history.append({"steps": step, "loss": loss.item(), "validation_accuracy": val_acc})
            print(
                f"    {name}: {step} steps, loss {loss.item():.4f}, val acc {val_acc:.3f}",
                flush=True,
            )
    return model.eval(), {
        "steps": steps,
        "train_s": time.perf_counter() - start,
        "validation_accuracy": history[-1]["validation_accuracy"],
        "history": history,
    }


# --------------------------------------------------------------------------- scoring


def score_maps(maps: Tensor, cells: Tensor) -> dict[str, list]:
    """Per map (N, 1, h, w): pointing hit (unique maximum in the cell), whether the
    maximum is tied, whether the map is constant, the positive-mass share in the cell
    (0 without positive mass), and the map's floor, min / max (None for an all-zero
    map), as ``benchmarks/map_floor.py`` measures it."""
    flat = maps.detach().reshape(len(maps), -1).double()
    top = flat.max(dim=1, keepdim=True).values
    maximal = flat == top
    ties = maximal.sum(1) > 1
    constant = flat.min(1).values == flat.max(1).values
    in_cell = maximal.gather(1, cells[:, None]).squeeze(1)
    hit = in_cell & ~ties
    positive = flat.clamp(min=0)
    total = positive.sum(1)
    mass = positive.gather(1, cells[:, None]).squeeze(1)
    energy = torch.where(total > 0, mass / total.clamp(min=1e-300), torch.zeros_like(total))
    argmax = flat.argmax(1)
    top = top.squeeze(1)
    floor = torch.where(top > 0, flat.min(1).values / top.clamp(min=1e-300), torch.nan)
    return {
        "pointing": hit.double().tolist(),
        "energy": energy.tolist(),
        "min_over_max": [None if math.isnan(v) else v for v in floor.tolist()],
        "tie": ties.tolist(),
        "constant": constant.tolist(),
        "argmax": argmax.tolist(),
    }


def explain(model: nn.Module, data: dict[str, Tensor], n: int) -> dict[str, Any]:
    """Every CAM at the default layer, on the first ``n`` held-out images."""
    choice = default_layer(model)
    layer = model.get_submodule(choice.name)
    x, labels = data["x"][:n], data["labels"][:n]
    out: dict[str, Any] = {"layer": choice.name, "layer_reason": choice.reason, "methods": {}}
    for method, cls in METHODS.items():
        cam = cls(model, layer, reshape_transform="auto")
        parts, seconds, warned = [], 0.0, 0
        for xs, ys in zip(x.split(EXPLAIN_BATCH), labels.split(EXPLAIN_BATCH), strict=True):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConstantMapWarning)
                start = time.perf_counter()
                maps = cam.attribute(xs, target=ys, relu_attributions=True)
                seconds += time.perf_counter() - start
            warned += sum(issubclass(w.category, ConstantMapWarning) for w in caught)
            parts.append(maps.detach())
        maps = torch.cat(parts)
        map_size = (maps.shape[-2], maps.shape[-1])
        cells = cell_of(data["corners"][:n], map_size)
        distractor_cells = cell_of(data["distractor_corners"][:n], map_size)
        scores = score_maps(maps, cells)
        scores["on_distractor"] = [
            float(a == c and not t)
            for a, c, t in zip(
                scores["argmax"], distractor_cells.tolist(), scores["tie"], strict=True
            )
        ]
        out["map_size"] = list(map_size)
        out["methods"][method] = {
            "s_per_image": seconds / n,
            "constant_map_warnings": warned,
            "cells": cells.tolist(),
            **scores,
        }
        rate = float(np.mean(scores["pointing"]))
        print(
            f"    {method:<13s} pointing {rate:.3f}, energy {np.mean(scores['energy']):.3f}, "
            f"constant {sum(scores['constant'])}, {seconds / n * 1000:.1f} ms/image",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------- statistics


def statistics(result: dict[str, Any]) -> dict[str, Any]:
    """Per method and metric: mean with bootstrap CI; against Grad-CAM: paired row."""
    methods = result["methods"]
    reference = methods[REFERENCE]
    table: dict[str, Any] = {}
    for method, scores in methods.items():
        row: dict[str, Any] = {}
        for metric in METRICS:
            values = np.array(scores[metric], dtype=np.float64)
            low, high = bootstrap_mean_ci(values)
            row[metric] = {"mean": float(values.mean()), "ci95": [low, high]}
            if method != REFERENCE:
                items = {str(i): v for i, v in enumerate(scores[metric])}
                ref = {str(i): v for i, v in enumerate(reference[metric])}
                row[metric]["vs_grad_cam"] = paired(items, ref, "higher")
        row["ties"] = int(sum(scores["tie"]))
        row["constant"] = int(sum(scores["constant"]))
        row["on_distractor"] = float(np.mean(scores["on_distractor"]))
        floors = [v for v in scores["min_over_max"] if v is not None]
        row["median_min_over_max"] = float(np.median(floors)) if floors else None
        row["s_per_image"] = scores["s_per_image"]
        table[method] = row
    return table


# --------------------------------------------------------------------------- report


def report(payload: dict[str, Any], env: dict[str, Any], total_s: float) -> str:
    n = payload["n"]
    lines = [
        "# CAM localisation on small hub transformers (toy task, trained here)",
        "",
        environment_lines(env, total_s),
        *(
            [
                f"- Read from the cache (scores of an earlier run, same settings): "
                f"{', '.join(payload['cached_models'])}"
            ]
            if payload["cached_models"]
            else []
        ),
        "",
        "Task: 32x32 px noisy images; a 4x4 px square of the class colour (red, green or "
        "blue) at a random offset inside one of 16 8x8 px patches, and a white 4x4 px "
        "distractor square in another patch. Every CAM explains the true class at "
        '`default_layer(model)` with `reshape_transform="auto"`, `relu_attributions=True` '
        f"and its default settings, on the same n = {n} held-out images per model (seed "
        f"{TEST_SEED}). Scores at the map's resolution (4x4 cells of 8x8 px on every model):",
        "",
        "- **pointing**: 1 if the map's maximum is the square's cell; a tied maximum is a "
        "miss (ties are counted in their own column), so a constant map "
        "(`ConstantMapWarning`) is a miss;",
        "- **energy**: share of the map's positive mass in the square's cell (0 for an "
        "all-zero map).",
        "",
        f"Chance is {CHANCE:.4f} (1/16) for both. Means with percentile bootstrap 95% CIs "
        f'({SAMPLES} resamples, seed {SEED}); "method - Grad-CAM" is the mean of the paired '
        "per-image differences with its bootstrap CI and wins/losses/ties; a difference is "
        f'claimed (bold) only where the CI excludes 0 (n >= {MIN_CLAIM_N}), else "not shown '
        'either way". "vs chance": whether the pointing CI lies above or below 1/16. '
        '"min/max": the median over the maps that are not all zero of the map\'s minimum '
        "over its maximum (its floor: near 1 is a nearly flat map, whose energy is near 1/16 "
        'wherever its maximum is). "on distractor": share of maps whose unique maximum is '
        f"the white square's cell. Time: wall time per image of `attribute` on batches of "
        f"{EXPLAIN_BATCH}, one thread on a shared machine (context, not a benchmark).",
        "",
    ]
    lines += summary_table(payload)
    for name in payload["models"]:
        lines += model_section(name, payload["models"][name], n)
    notes = [note for key, note in NOTES if key is None or key in payload["models"]]
    lines += ["## Findings", "", *findings(payload), "", NOTES_TITLE, "", *notes, ""]
    return "\n".join(lines)


def summary_table(payload: dict[str, Any]) -> list[str]:
    names = list(payload["models"])
    lines = [
        "## Summary: pointing hit rate, and against Grad-CAM's (paired, per image)",
        "",
        "| method | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for method in METHODS:
        cells = []
        for name in names:
            row = payload["models"][name]["statistics"][method]
            diff = row["pointing"].get("vs_grad_cam")
            word = "" if diff is None else f" ({short_verdict(diff)})"
            cells.append(f"{row['pointing']['mean']:.3f}{word}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    accuracies = ", ".join(f"{name} {payload['models'][name]['accuracy']:.3f}" for name in names)
    lines += [
        "",
        f'n = {payload["n"]} images per model; held-out accuracy {accuracies}. "higher" / '
        '"lower": the paired 95% CI of the difference from Grad-CAM excludes 0; "n.s.": '
        'not shown either way; "same": equal on every image. Full tables below.',
        "",
    ]
    return lines


def model_section(name: str, model: dict[str, Any], n: int) -> list[str]:
    stats = model["statistics"]
    h, w = model["explained"]["map_size"]
    train_info = model["training"]
    warn = ""
    if model["accuracy"] < MIN_ACCURACY:
        warn = f" (below {MIN_ACCURACY}: its maps are not worth reading)"
    lines = [
        f"## {name}",
        "",
        f"- Model: {model['description']}; {model['parameters']:,} parameters",
        f"- Trained: {train_info['steps']} steps of {BATCH} images, Adam lr 1e-3 with cosine "
        f"decay ({train_info['train_s']:.0f} s), validation accuracy "
        f"{train_info['validation_accuracy']:.3f} (500 images)",
        f"- Held-out accuracy: **{model['accuracy']:.3f}**{warn} on {model['accuracy_n']} "
        f"images ({model['correct_explained']} of the {n} explained images classified "
        "correctly)",
        f"- Layer: `{model['explained']['layer']}` ({model['explained']['layer_reason']}), "
        f"map {h}x{w}, {model['cell_note']}",
        "",
        "| method | pointing [95% CI] | vs chance | ties (constant) | energy [95% CI] "
        "| min/max | on distractor | ms / image |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for method, row in stats.items():
        floor = row["median_min_over_max"]
        lines.append(
            f"| {method} | {mean_ci(row['pointing'])} | {above_chance(row['pointing'])} "
            f"| {row['ties']} ({row['constant']}) | {mean_ci(row['energy'])} "
            f"| {'—' if floor is None else f'{floor:.3f}'} | {row['on_distractor']:.3f} "
            f"| {row['s_per_image'] * 1000:.1f} |"
        )
    lines += [
        "",
        "| method - Grad-CAM | pointing [95% CI] w/l/t | verdict | energy [95% CI] w/l/t "
        "| verdict |",
        "|---|---|---|---|---|",
    ]
    for method, row in stats.items():
        if method == REFERENCE:
            continue
        cells = []
        for metric in METRICS:
            diff = row[metric]["vs_grad_cam"]
            mark = "**" if claimed(diff) else ""
            cells += [
                f"{mark}{interval(diff, 3)}{mark} {diff['wins']}/{diff['losses']}/{diff['ties']}",
                verdict(diff),
            ]
        lines.append(f"| {method} - Grad-CAM | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def short_verdict(row: dict[str, Any]) -> str:
    if row["ties"] == row["n"]:
        return "same"
    if claimed(row):
        return "higher" if row["mean"] > 0 else "lower"
    return "n.s."


def verdict(row: dict[str, Any]) -> str:
    return {
        "same": f"the same as Grad-CAM on all {row['n']} images",
        "higher": "higher than Grad-CAM",
        "lower": "lower than Grad-CAM",
        "n.s.": f"not shown either way at n = {row['n']}",
    }[short_verdict(row)]


def mean_ci(cell: dict[str, Any]) -> str:
    low, high = cell["ci95"]
    return f"{cell['mean']:.3f} [{low:.3f}, {high:.3f}]"


def above_chance(cell: dict[str, Any]) -> str:
    low, high = cell["ci95"]
    if low > CHANCE:
        return "above"
    if high < CHANCE:
        return "below"
    return "not shown either way"


def _names(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def findings(payload: dict[str, Any]) -> list[str]:
    """Sentences drawn from the statistics; each claims only what a CI shows, and a
    sentence whose pattern the numbers do not show is left out."""
    n = payload["n"]
    models = payload["models"]
    names = list(models)
    methods = [m for m in METHODS if m != REFERENCE]
    out: list[str] = []

    def diff(name: str, method: str, metric: str = "pointing") -> dict[str, Any]:
        return models[name]["statistics"][method][metric]["vs_grad_cam"]

    def cell(name: str, method: str, metric: str = "pointing") -> dict[str, Any]:
        return models[name]["statistics"][method][metric]

    # 1. Methods that point better than Grad-CAM on every model.
    verdicts = {m: {name: short_verdict(diff(name, m)) for name in names} for m in methods}
    always = [m for m in methods if all(v == "higher" for v in verdicts[m].values())]
    if always:
        parts = []
        for method in always:
            rows = sorted(names, key=lambda name: diff(name, method)["mean"])
            rates = [cell(name, method)["mean"] for name in names]
            parts.append(
                f"{method} {min(rates):.3f} to {max(rates):.3f} (paired differences from "
                f"{interval(diff(rows[0], method), 3)} on {rows[0]} to "
                f"{interval(diff(rows[-1], method), 3)} on {rows[-1]})"
            )
        reference = [cell(name, REFERENCE)["mean"] for name in names]
        out.append(
            f"- {_names(always)} point to the square's cell more often than Grad-CAM on all "
            f"{len(names)} models (n = {n} each): hit rates {'; '.join(parts)}, against "
            f"Grad-CAM's {min(reference):.3f} to {max(reference):.3f}."
        )
    # 2. The other methods against Grad-CAM.
    never = [
        m
        for m in methods
        if "higher" not in verdicts[m].values()
        and sum(v == "lower" for v in verdicts[m].values()) >= 2
    ]
    mixed = [m for m in methods if m not in always and m not in never]
    words = {"n.s.": "not shown either way", "same": "the same"}
    sentences = []
    if never:
        lower = sorted({name for m in never for name, v in verdicts[m].items() if v == "lower"})
        rest = "; ".join(
            f"{m}: {words[v]} on {name}"
            for m in never
            for name, v in verdicts[m].items()
            if v != "lower"
        )
        common = all(
            {name for name, v in verdicts[m].items() if v == "lower"} == set(lower) for m in never
        )
        where = f"on {_names([x for x in names if x in lower])}" if common else "on most models"
        sentences.append(
            f"{_names(never)} point to it less often than Grad-CAM {where} and more often on "
            f"none" + (f" ({rest})" if rest else "")
        )
    for method in mixed:
        groups = {}
        for name, v in verdicts[method].items():
            groups.setdefault(v, []).append(name)
        label = {"higher": "more often", "lower": "less often", "n.s.": "not shown either way"}
        label["same"] = "the same"
        sentences.append(
            f"{method} {', '.join(f'{label[v]} on {_names(g)}' for v, g in groups.items())}"
        )
    if sentences:
        out.append("- Against Grad-CAM's pointing: " + "; ".join(sentences) + ".")
    # 3. At or below chance.
    weak = [(m, name) for m in METHODS for name in names if above_chance(cell(name, m)) != "above"]
    if weak:
        parts = [
            f"{m} on {name} {mean_ci(cell(name, m))}"
            + (" (below chance)" if above_chance(cell(name, m)) == "below" else "")
            for m, name in weak
        ]
        out.append(
            "- Pointing hit rates whose CI does not lie above chance (1/16): "
            + "; ".join(parts)
            + "."
        )
    # 4. Nearly flat maps.
    for name in names:
        flat = [
            m for m in METHODS if (models[name]["statistics"][m]["median_min_over_max"] or 0) >= 0.9
        ]
        if flat:
            floors = [models[name]["statistics"][m]["median_min_over_max"] for m in flat]
            energies = [cell(name, m, "energy")["mean"] for m in flat]
            gaps = (
                [abs(diff(name, m, "energy")["mean"]) for m in flat if m != REFERENCE]
                if REFERENCE in flat
                else []
            )
            gap = (
                f"; their energy differs from Grad-CAM's by at most {max(gaps):.4f} on "
                "average, claimed or not"
                if gaps
                else ""
            )
            out.append(
                f"- On {name}, the maps of {_names(flat)} are nearly flat (median min/max "
                f"{min(floors):.3f} to {max(floors):.3f}), so their energy in the square's "
                f"cell is {min(energies):.4f} to {max(energies):.4f}, about 1/16 "
                f"({CHANCE:.4f}), wherever their maximum is{gap}."
            )
    # 5. Pointing and energy disagree.
    for method in methods:
        split = [
            name
            for name in names
            if short_verdict(diff(name, method)) == "higher"
            and short_verdict(diff(name, method, "energy")) in ("lower", "n.s.")
        ]
        if split:
            said = {"lower": "lower", "n.s.": "not shown either way"}
            parts = [
                f"{name}: pointing {interval(diff(name, method), 3)}, energy "
                f"{interval(diff(name, method, 'energy'), 3)}, "
                f"{said[short_verdict(diff(name, method, 'energy'))]}"
                for name in split
            ]
            energies = [cell(name, method, "energy")["mean"] for name in split]
            rates = [cell(name, method)["mean"] for name in split]
            out.append(
                f"- {method} points to the square more often than Grad-CAM but its energy "
                f"there is not higher on {_names(split)} (differences from Grad-CAM's, "
                f"{'; '.join(parts)}): its hit rate there is {min(rates):.3f} to "
                f"{max(rates):.3f}, but only {min(energies):.3f} to {max(energies):.3f} of its "
                "positive mass is in the square's cell."
            )

    # 6. Constant maps.
    def others(name: str, method: str) -> str:
        scores = models[name]["explained"]["methods"][method]
        rest = [p for p, c in zip(scores["pointing"], scores["constant"], strict=True) if not c]
        return f"{np.mean(rest):.3f} on the other {len(rest)}" if rest else "no other maps"

    constant = [
        f"{m} {models[name]['statistics'][m]['constant']} on {name} (hit rate {others(name, m)})"
        for name in names
        for m in METHODS
        if models[name]["statistics"][m]["constant"] >= 0.05 * n
    ]
    if constant:
        out.append(
            f"- Constant (all-zero) maps, counted as misses, in at least 5% of the {n} "
            f"images: {', '.join(constant)}."
        )
    return out


#: What the tables do not measure but follows from the models' structure; the report
#: prints it under the findings, marked as such.
NOTES_TITLE = "Notes (from the models' structure, not measured here):"
NOTES = [
    (
        "timm-swin",
        "- At Swin's final norm only the average pooling and the linear head follow, so the "
        "gradient of the class score is the same at every cell: Grad-CAM and XGrad-CAM both "
        "reduce to CAM (class weights times the layer's tokens) and differ only by rounding. In "
        "this Swin the last stage's 4x4 map is a single attention window, so every token there "
        "has attended to every other (as in `swin_tiny` at 224 px, whose last stage is one "
        "7x7 window).",
    ),
    (
        None,
        "- At a LayerNorm's output (every layer here) a channel at 0 is an ordinary value, not "
        "the absence of a feature: Ablation-CAM and FD-CAM switch a channel off by setting it "
        "to 0 (FD-CAM's switch-on copies keep one group of channels and set the rest to 0), "
        "which after a ReLU in a CNN removes a feature and here only moves the channel to "
        "another value. An all-zero map after `relu_attributions` means the weighted sum was "
        "at most 0 at every cell: no positive evidence for the class at this layer by that "
        "method's weights.",
    ),
]


# --------------------------------------------------------------------------- main


DESCRIPTIONS = {
    "timm-vit": "timm `vit_tiny_patch16_224` (img_size 32, patch 8, embed_dim 32, depth 2, "
    "2 heads): class token + 4x4 patch tokens",
    "timm-vit-reg4": "timm `vit_tiny_patch16_224` as above with `reg_tokens=4`: class token "
    "+ 4 registers + 4x4 patch tokens",
    "timm-swin": "timm `swin_tiny_patch4_window7_224` (img_size 32, patch 4, embed_dim 32, "
    "depths (2, 2), heads (2, 4), window 4): 8x8 tokens, 4x4 after one merge",
    "hf-vit": "Hugging Face `ViTForImageClassification` (`ViTConfig(image_size=32, "
    "patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, "
    "intermediate_size=64)`): class token + 4x4 patch tokens",
}


def cell_note(name: str, map_size: tuple[int, int]) -> str:
    h, w = map_size
    cell = f"cells of {IMAGE // h}x{IMAGE // w} px"
    if name == "timm-swin":
        return (
            f"{cell} (coarser than Swin's 4 px patch tokens: the square's cell is the one "
            "holding the square's centre; the 4 px square always lies inside it, as each "
            "8 px cell is exactly one of the task's patches)"
        )
    return f"{cell}: one cell per patch token; the square's cell is its patch"


def run_model(name: str, args: argparse.Namespace, validation: dict, test: dict) -> dict:
    signature = json.dumps(
        {"model": name, "steps": args.steps, "n": args.n, "version": 2},
        sort_keys=True,
    )
    key = hashlib.sha1(signature.encode()).hexdigest()[:12]
    cache = args.cache / f"{name}-{key}.json"
    if cache.exists():
        print(f"{name}: cached ({cache})", flush=True)
        return json.loads(cache.read_text()) | {"cached": str(cache)}
    start = time.perf_counter()
    print(f"{name}: training", flush=True)
    model, training = train(name, args.steps, validation)
    acc, correct = accuracy(model, test)
    print(f"    held-out accuracy {acc:.3f}", flush=True)
    print(f"{name}: explaining {args.n} images", flush=True)
    explained = explain(model, test, args.n)
    result = {
        "description": DESCRIPTIONS[name],
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": training,
        "accuracy": acc,
        "accuracy_n": len(test["labels"]),
        "items": {
            "label": test["labels"][: args.n].tolist(),
            "square_patch": test["patches"][: args.n].tolist(),
            "square_corner": test["corners"][: args.n].tolist(),
            "distractor_patch": test["distractors"][: args.n].tolist(),
            "correct": correct[: args.n].tolist(),
        },
        "correct_explained": int(correct[: args.n].sum()),
        "explained": explained,
        "cell_note": cell_note(name, tuple(explained["map_size"])),
        "run_s": time.perf_counter() - start,
    }
    args.cache.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    torch.save(model.state_dict(), cache.with_suffix(".pt"))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 models, 40 images")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None)
    parser.add_argument("--n", type=int, default=None, help="images explained per model (200)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (2000)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/hub_localisation_cache"))
    args = parser.parse_args(argv)
    args.models = args.models or (["timm-vit", "hf-vit"] if args.quick else list(MODELS))
    args.n = args.n or (40 if args.quick else 200)
    args.steps = args.steps or (200 if args.quick else 2000)
    args.threads, args.tune_malloc = 1, False
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*DefaultLayerWarning.*")

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    env = environment(args, command)
    env["versions"] |= {d: version(d) for d in ("timm", "transformers", "numpy")}
    start = time.perf_counter()
    validation = squares(500, torch.Generator().manual_seed(VALIDATION_SEED))
    test = squares(1000, torch.Generator().manual_seed(TEST_SEED))
    models = {}
    for name in args.models:
        result = run_model(name, args, validation, test)
        result["statistics"] = statistics(result["explained"])
        models[name] = result
    # Models read from the cache count with the time they took when computed.
    cached = [name for name, m in models.items() if "cached" in m]
    total_s = time.perf_counter() - start + sum(models[name]["run_s"] for name in cached)
    payload = {
        "environment": env,
        "n": args.n,
        "task": {
            "image": IMAGE,
            "patch": PATCH,
            "square": SQUARE,
            "classes": ["red", "green", "blue"],
            "distractor": "white square in another patch",
            "test_seed": TEST_SEED,
            "chance": CHANCE,
        },
        "scoring": {
            "pointing": "1 if the map's unique maximum is the square's cell; ties miss",
            "energy": "positive mass in the square's cell / total positive mass; 0 if none",
            "constant": "per image: the map is one value everywhere (all 0 here)",
            "constant_map_warnings": "per method: how many attribute calls (batches of "
            f"{EXPLAIN_BATCH}) raised ConstantMapWarning",
            "min_over_max": "per image: the map's minimum / maximum; None if all zero",
            "bootstrap": {"samples": SAMPLES, "seed": SEED},
        },
        "models": models,
        "cached_models": cached,
    }
    stem = "hub_localisation_quick" if args.quick else "hub_localisation"
    text = report(payload, env, total_s)
    write_results(args.out, stem, payload, text)
    print(text)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
