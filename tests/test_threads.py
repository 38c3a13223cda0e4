"""Attributions inside threaded programs: hooks act only on the attributing call.

A web service explains one request while it serves plain predictions on other threads,
or explains two models at once. The recording and replay of the channel-switching
methods use process-wide module hooks, and the captures and FG-CAM's propagation hook
the model's own modules: every one of them must leave other threads' forward passes
alone. Each test runs real threads side by side and checks every output against the
same computation done alone beforehand.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import SmallCNN
from torch import Tensor, nn

from captum_fdcam import FGCam, LayerAblationCam, LayerFDCam, LayerGradCam, LayerScoreCam

#: How many times each attribution runs while the other threads keep going.
ROUNDS = 3


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN().eval()


def _inputs(seed: int, n: int = 2) -> Tensor:
    torch.manual_seed(seed)
    return torch.randn(n, 3, 8, 8)


class _Worker(threading.Thread):
    """Runs ``job`` until ``stop`` is set (or ``rounds`` times), keeping every error and
    every result that differs from ``expected``."""

    def __init__(
        self,
        job: Callable[[], Tensor],
        expected: Tensor,
        stop: threading.Event | None = None,
        rounds: int = ROUNDS,
        overlap: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(daemon=True)
        self.job, self.expected, self.stop, self.rounds = job, expected, stop, rounds
        # the OS may schedule a fast attribution's rounds before another thread runs:
        # keep going (bounded) until the other threads have really run alongside
        self.overlap = overlap
        self.errors: list[BaseException] = []
        self.wrong = 0
        self.runs = 0

    def run(self) -> None:
        while True:
            try:
                out = self.job()
                if out.shape != self.expected.shape or not torch.allclose(
                    out, self.expected, rtol=1e-5, atol=1e-6
                ):
                    self.wrong += 1
            except BaseException as err:  # every failure is a finding
                self.errors.append(err)
            self.runs += 1
            if self.stop is not None:
                if self.stop.is_set():
                    return
            elif self.runs >= self.rounds and (self.overlap() or self.runs >= 50 * self.rounds):
                return


def _inference(model: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    def job() -> Tensor:
        with torch.no_grad():
            return model(x)

    return job


def _run_side_by_side(
    attributions: list[tuple[Callable[[], Tensor], Tensor]],
    inferences: list[tuple[Callable[[], Tensor], Tensor]],
) -> tuple[list[_Worker], list[_Worker], list[str]]:
    stop = threading.Event()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        servers = [_Worker(job, expected, stop=stop) for job, expected in inferences]
        overlap = lambda: all(server.runs > 1 for server in servers)  # noqa: E731
        explainers = [_Worker(job, expected, overlap=overlap) for job, expected in attributions]
        for worker in servers + explainers:
            worker.start()
        for worker in explainers:
            worker.join(timeout=120)
        stop.set()
        for worker in servers:
            worker.join(timeout=60)
    return explainers, servers, [str(w.message) for w in caught]


def _assert_clean(workers: list[_Worker], messages: list[str]) -> None:
    for worker in workers:
        assert not worker.is_alive()
        assert worker.errors == [], worker.errors[:3]
        assert worker.wrong == 0, f"{worker.wrong} of {worker.runs} outputs were wrong"
        assert worker.runs >= 1
    assert messages == [], messages[:3]


def _attribution(make: Callable[[nn.Module], Any], model: nn.Module, x: Tensor) -> Any:
    targets = list(range(len(x)))
    cam = make(model)
    job = lambda: cam.attribute(x, target=targets)  # noqa: E731
    return job, job()  # the expected map, computed alone first


METHODS: dict[str, Callable[[nn.Module], Any]] = {
    "FD-CAM": lambda m: LayerFDCam(m, m.features[3]),
    "Ablation-CAM": lambda m: LayerAblationCam(m, m.features[3]),
    "Grad-CAM": lambda m: LayerGradCam(m, m.features[3]),
    "Score-CAM": lambda m: LayerScoreCam(m, m.features[3]),
    "FG-Grad-CAM": lambda m: FGCam(LayerGradCam(m, m.features[3])),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_attribution_beside_inference_on_the_same_and_another_model(method: str) -> None:
    model, other = _model(0), _model(1)
    x, y = _inputs(2), _inputs(3, n=5)
    job, expected = _attribution(METHODS[method], model, x)
    inferences = [
        (_inference(model, y), _inference(model, y)()),
        (_inference(other, y), _inference(other, y)()),
    ]
    explainers, servers, messages = _run_side_by_side([(job, expected)], inferences)
    _assert_clean(explainers + servers, messages)
    # the servers really ran while the attribution did
    assert all(server.runs > 1 for server in servers)


def test_two_attributions_on_two_models_at_once() -> None:
    first, second = _model(4), _model(5)
    x = _inputs(6)
    jobs = [
        _attribution(METHODS["FD-CAM"], first, x),
        _attribution(METHODS["Ablation-CAM"], second, x),
        _attribution(METHODS["FD-CAM"], second, x),
    ]
    inference = [(_inference(first, x), _inference(first, x)())]
    explainers, servers, messages = _run_side_by_side(jobs, inference)
    _assert_clean(explainers + servers, messages)


def test_two_attributions_on_one_model_at_once() -> None:
    model = _model(7)
    x, y = _inputs(8), _inputs(9, n=3)
    jobs = [
        _attribution(METHODS["FD-CAM"], model, x),
        _attribution(METHODS["Ablation-CAM"], model, y),
        _attribution(METHODS["FG-Grad-CAM"], model, x),
    ]
    explainers, _, messages = _run_side_by_side(jobs, [])
    _assert_clean(explainers, messages)


@pytest.mark.slow
def test_a_plain_model_leaves_the_compiler_stance_alone() -> None:
    """Dynamo's stance is process-wide: set only where compiled code may run, so that an
    attribution of a plain model does not make other threads' compiled code run eagerly."""
    from torch._dynamo import eval_frame

    torch.compile(lambda t: t * 2)(torch.ones(2))  # something compiled in this process
    model = _model(10)
    seen: list[str] = []
    handle = model.features[3].register_forward_hook(
        lambda *_: seen.append(eval_frame._stance.stance)
    )
    try:
        for make in METHODS.values():
            make(model).attribute(_inputs(11), target=[0, 1])
    finally:
        handle.remove()
    assert seen and set(seen) == {"default"}
