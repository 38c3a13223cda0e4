"""ROAD (Rong et al., 2022) for colour images: Quantus's metric, ranking pixels.

``quantus.ROAD`` (0.6) broadcasts the attributions to the input's shape and ranks the
C x H x W values, but its noisy linear imputation takes *pixel* indices (< H x W) and
imputes all channels of each: on a 3-channel image any ranked value of channel 1 or 2
is out of range (``IndexError``), and ``p`` percent removes only ``p/3`` percent of
the values it ranks. Its post-processing also reads only the first batch. This
subclass ranks the pixels of the channel-summed map, removes ``p`` percent of them,
and averages every batch; everything else (constructor, ``noise``, ``percentages``,
``perturb_func``, the result as ``{percentage: accuracy}``) is Quantus's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import quantus

from captum_fdcam.evaluation.metrics import pixel_ranking


class ROAD(quantus.ROAD):
    """Remove And Debias: accuracy after imputing the most relevant ``p`` % of pixels.

    A drop-in replacement for ``quantus.ROAD`` (same arguments and result) that works on
    multi-channel images. Lower accuracy at small ``p`` means a more faithful map.
    """

    def evaluate_batch(
        self,
        model: Any,
        x_batch: np.ndarray,
        y_batch: np.ndarray,
        a_batch: np.ndarray,
        **kwargs: Any,
    ) -> list[np.ndarray]:
        """(N, len(percentages)) 0/1: whether each image is still classified as its label."""
        n_pixels = x_batch.shape[-2] * x_batch.shape[-1]
        ranking = np.stack([pixel_ranking(a) for a in a_batch])
        results = []
        for p in self.percentages:
            top = ranking[:, : int(n_pixels * p / 100)]
            x_perturbed = np.stack(
                [self.perturb_func(arr=x, indices=idx) for x, idx in zip(x_batch, top, strict=True)]
            )
            x_input = model.shape_input(
                x_perturbed, x_batch.shape, channel_first=True, batched=True
            )
            results.append(y_batch == np.argmax(model.predict(x_input), axis=-1))
        return [np.stack(results, axis=1).astype(int)]

    def custom_batch_preprocess(self, a_batch: np.ndarray, **kwargs: Any) -> None:
        """Quantus sets the map size here; the pixels are counted in evaluate_batch."""

    def custom_postprocess(self, **kwargs: Any) -> None:
        """Accuracy per percentage over every image of every batch."""
        per_image = np.concatenate(self.evaluation_scores, axis=0)
        self.evaluation_scores = dict(zip(self.percentages, per_image.mean(axis=0), strict=True))
