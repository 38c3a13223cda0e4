"""Insertion/deletion as the FD-CAM paper runs them: steps of 8 rows (1792 pixels at
224 x 224), the AUC's trapezoid over the share of pixels moved, and the batched copies
against a naive loop that builds each perturbed image pixel by pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from captum_fdcam.evaluation import AverageDrop, AverageIncrease, Deletion, Insertion, curve_auc


def _model() -> nn.Module:
    """A small random CNN: cheap at 224 x 224, and every pixel moves its scores."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).eval()


def _inputs(n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(h * w + n)
    x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
    a = rng.random((n, 1, h, w)).astype(np.float32)
    a[:, :, : h // 3] += 1.0  # ties broken by index inside a block would be fine too
    return x, rng.integers(0, 3, n), a


def _prob(model: nn.Module, image: np.ndarray, label: int) -> float:
    with torch.no_grad():
        return float(model(torch.from_numpy(image[None])).softmax(-1)[0, label])


def _naive(model, x, label, a, start, end, step) -> tuple[list[float], list[int]]:
    """The curve and the pixels moved at each point, one pixel at a time."""
    _, h, w = x.shape
    flat = a.sum(axis=0).reshape(-1)
    order = sorted(range(h * w), key=lambda i: (-flat[i], i))
    current = start.copy()
    scores, moved = [_prob(model, current, label)], [0]
    done = 0
    while done < h * w:
        for p in order[done : done + step]:
            r, c = divmod(p, w)
            current[:, r, c] = end[:, r, c]
        done = min(done + step, h * w)
        scores.append(_prob(model, current, label))
        moved.append(done)
    return scores, moved


def _hand_trapezoid(scores: list[float], moved: list[int], total: int) -> float:
    area = 0.0
    for i in range(1, len(scores)):
        area += (moved[i] - moved[i - 1]) / total * (scores[i] + scores[i - 1]) / 2
    return area


def _blur(x: np.ndarray, k: int, sigma: float) -> np.ndarray:
    return gaussian_blur(torch.from_numpy(x[None]), [k, k], [sigma, sigma]).numpy()[0]


@pytest.mark.slow
def test_at_224_deletion_takes_28_steps_of_1792_pixels_and_the_auc_is_the_old_formula() -> None:
    model, (x, y, a) = _model(), _inputs(1, 224, 224)
    metric = Deletion(disable_warnings=True)
    (auc,) = metric(model, x, y, a_batch=a)
    scores, moved = _naive(model, x[0], int(y[0]), a[0], x[0], np.zeros_like(x[0]), 1792)
    assert moved == [1792 * i for i in range(29)]
    np.testing.assert_allclose(metric.fractions[0] * 224 * 224, moved)
    np.testing.assert_allclose(metric.curves[0], scores, rtol=1e-5, atol=1e-6)
    curve = np.asarray(metric.curves[0], dtype=np.float64)
    assert auc == pytest.approx(_hand_trapezoid(list(curve), moved, 224 * 224), abs=1e-12)
    # Equal steps: the same as the equal-spacing formula the AUC used before.
    old = (curve.sum() - curve[0] / 2 - curve[-1] / 2) / 28
    assert auc == pytest.approx(old, abs=1e-12)
    assert curve_auc(curve) == pytest.approx(old, abs=1e-15)


@pytest.mark.slow
def test_at_224_insertion_starts_from_the_blur_in_steps_of_1792() -> None:
    model, (x, y, a) = _model(), _inputs(1, 224, 224)
    metric = Insertion(disable_warnings=True)
    (auc,) = metric(model, x, y, a_batch=a)
    blurred = _blur(x[0], 11, 5.0)
    scores, moved = _naive(model, x[0], int(y[0]), a[0], blurred, x[0], 1792)
    assert len(metric.curves[0]) == 29
    np.testing.assert_allclose(metric.curves[0], scores, rtol=1e-5, atol=1e-6)
    assert auc == pytest.approx(_hand_trapezoid(scores, moved, 224 * 224), abs=1e-6)


@pytest.mark.parametrize(("h", "w"), [(36, 36), (20, 12)])
def test_a_short_last_step_weighs_by_its_width(h: int, w: int) -> None:
    """36 x 36: steps of 288, the fifth moves 144; 20 x 12: steps of 96, the third 48."""
    model, (x, y, a) = _model(), _inputs(3, h, w)
    metric = Deletion(disable_warnings=True, predict_batch_size=4)  # batches span images
    aucs = metric(model, x, y, a_batch=a)
    for i in range(3):
        scores, moved = _naive(model, x[i], int(y[i]), a[i], x[i], np.zeros_like(x[i]), 8 * w)
        assert len(scores) == -(-h // 8) + 1 and moved[-1] - moved[-2] == h * w % (8 * w)
        np.testing.assert_allclose(metric.fractions[i] * h * w, moved)
        np.testing.assert_allclose(metric.curves[i], scores, rtol=1e-5, atol=1e-6)
        assert aucs[i] == pytest.approx(_hand_trapezoid(scores, moved, h * w), abs=1e-6)
        equal_spacing = (sum(scores) - scores[0] / 2 - scores[-1] / 2) / (len(scores) - 1)
        assert aucs[i] != pytest.approx(equal_spacing, abs=1e-9)


@pytest.mark.slow
def test_insertion_of_several_images_in_shared_batches_matches_the_naive_loop() -> None:
    model, (x, y, a) = _model(), _inputs(3, 24, 24)
    metric = Insertion(disable_warnings=True, predict_batch_size=5, pixels_per_step=50)
    aucs = metric(model, x, y, a_batch=a)
    for i in range(3):
        blurred = _blur(x[i], 11, 5.0)
        scores, moved = _naive(model, x[i], int(y[i]), a[i], blurred, x[i], 50)
        np.testing.assert_allclose(metric.curves[i], scores, rtol=1e-5, atol=1e-6)
        assert aucs[i] == pytest.approx(_hand_trapezoid(scores, moved, 24 * 24), abs=1e-6)


def test_a_fraction_still_means_a_share_of_the_image() -> None:
    assert Deletion(pixels_per_step=0.036).step_size(224, 224) == 1806
    assert Deletion(pixels_per_step=0.5).step_size(100) == 50
    assert Deletion(pixels_per_step=1792).step_size(100, 100) == 1792
    assert Deletion().step_size(224, 224) == 1792 and Deletion().step_size(64, 96) == 768
    with pytest.raises(ValueError, match="width"):
        Deletion().step_size(100)


def test_curve_auc_with_fractions_is_the_hand_trapezoid() -> None:
    scores = [0.9, 0.5, 0.2, 0.1]
    moved = [0, 40, 80, 100]
    expected = _hand_trapezoid(scores, moved, 100)
    assert curve_auc(np.array(scores), np.array(moved) / 100) == pytest.approx(expected)
    assert curve_auc(np.array(scores)) == pytest.approx((1.7 - 0.45 - 0.05) / 3)
    with pytest.raises(ValueError, match="increasing"):
        curve_auc(np.array(scores), np.array([0, 0.5, 0.4, 1.0]))


@pytest.mark.parametrize("positive_only", [False, True])
def test_average_drop_and_increase_of_several_images_match_a_naive_loop(
    positive_only: bool,
) -> None:
    model, (x, y, a) = _model(), _inputs(4, 32, 32)
    a -= 0.9  # some pixels negative, for positive_only
    kwargs = {"disable_warnings": True, "predict_batch_size": 3, "positive_only": positive_only}
    drops = AverageDrop(**kwargs)(model, x, y, a_batch=a)
    rises = AverageIncrease(**kwargs)(model, x, y, a_batch=a)
    for i in range(4):
        flat = a[i].sum(axis=0).reshape(-1)
        order = sorted(range(32 * 32), key=lambda p: (-flat[p], p))
        keep = 512 if not positive_only else min(512, int((flat > 0).sum()))
        blurred = _blur(x[i], 31, 50.0)  # the 51 kernel, cut to the reflect limit
        masked = blurred.copy()
        for p in order[:keep]:
            r, c = divmod(p, 32)
            masked[:, r, c] = x[i][:, r, c]
        before, after = _prob(model, x[i], int(y[i])), _prob(model, masked, int(y[i]))
        assert drops[i] == pytest.approx(100 * max(0.0, before - after) / before, abs=1e-4)
        assert rises[i] == 100.0 * (before < after)


@pytest.mark.slow
def test_benchmark_records_the_x_axis_and_refuses_scores_of_the_older_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 64 x 64: 8 steps of 512 pixels. A folder whose fingerprint lacks the protocol
    (scored in steps of 3.6%) is refused, not resumed."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from PIL import Image

    from captum_fdcam import benchmark

    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / f"img{i}.png")
    (data / "labels.csv").write_text("file,class_index\nimg0.png,0\nimg1.png,10\n")
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--limit", "1", "--tables", "fdcam-table1"]
    argv += ["--cams", "Grad-CAM", "--image-size", "64", "--quiet"]
    assert benchmark.main(argv) == 0
    capsys.readouterr()
    shard = out / "scores-rank0.jsonl"
    (record,) = [json.loads(line) for line in shard.read_text().splitlines()]
    assert record["key"]["run"]["protocol"] == benchmark.PROTOCOL
    assert record["scores"]["deletion_x_curve"] == [i / 8 for i in range(9)]
    curve = np.array(record["scores"]["deletion_curve"])
    assert record["scores"]["deletion"] == pytest.approx(curve_auc(curve), abs=1e-12)
    # The same folder as the older version wrote it: no protocol in the fingerprint.
    manifest = json.loads((out / "run.json").read_text())
    del manifest["fingerprint"]["protocol"]
    (out / "run.json").write_text(json.dumps(manifest))
    del record["key"]["run"]["protocol"]
    shard.write_text(json.dumps(record) + "\n")
    before = shard.read_text()
    assert benchmark.main(argv) == 2
    err = capsys.readouterr().err
    assert "evaluation protocol" in err and "pass another --out" in err, err
    assert shard.read_text() == before
