"""An ``explain_func`` for Quantus that runs any method of this library or of Captum.

Quantus calls ``explain_func(model=model, inputs=x_batch, targets=y_batch,
**explain_func_kwargs)`` with numpy arrays and expects numpy attributions back::

    import quantus
    from captum_fdcam.evaluation import explain

    # 6272 values a step: 24 forward passes per 224 x 224 image (224 would take 672)
    metric = quantus.PixelFlipping(features_in_step=6272)
    curves = metric(model, x_batch, y_batch, explain_func=explain,
                    explain_func_kwargs={"method": "FD-CAM", "layer": "head_activation"})
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from captum.attr import Attribution, LayerAttribution
from torch import Tensor, nn

from captum_fdcam import registry
from captum_fdcam._core.base import LayerCamBase, WeightedLayerCam
from captum_fdcam.architectures import AUTO, default_layer
from captum_fdcam.errors import DefaultLayerWarning
from captum_fdcam.evaluation.memo import WeightsCache, digest
from captum_fdcam.evaluation.saliency import channel_sum
from captum_fdcam.methods.fine_grained import FGCam, LayerFGCam
from captum_fdcam.methods.lrp import PropagationLRP
from captum_fdcam.resolve import default_layer_name, find_layer, method_class
from captum_fdcam.targets import Logits

# method_class, find_layer and default_layer_name live in captum_fdcam.resolve, the one
# place that resolves names; they stay importable from here.
__all__ = ["default_layer_name", "explain", "find_layer", "method_class"]


def _default_layer_notice(model: nn.Module) -> None:
    """Says which layer a call without ``layer`` explains (once per model class and
    layer, by Python's default warning filter): never a silent choice."""
    if isinstance(getattr(model, "head_activation", None), nn.Module):
        return  # the offline model, documented as the default
    choice = default_layer(model)
    warnings.warn(
        f"captum_fdcam.explain: explaining layer '{choice.name}' of "
        f"{type(model).__name__} ({choice.reason}, the default); pass layer= to choose.",
        DefaultLayerWarning,
        stacklevel=3,
    )


def _build(
    model: nn.Module,
    method: str | type,
    layer: str | nn.Module | None,
    options: Mapping[str, Any],
    fg_layer: str | nn.Module | None,
    fg_options: Mapping[str, Any] | None,
) -> tuple[Attribution, bool]:
    """The attribution object, and whether it explains a layer (then upsampled)."""
    base_name, fg = registry.split_fg(method) if isinstance(method, str) else (method, False)
    if not fg:
        if fg_layer is not None or fg_options:
            raise ValueError(
                f"fg_layer and fg_kwargs are FG-CAM's: use method='FG-{base_name}' "
                "(or leave them out)."
            )
        cls = method_class(method)
        if issubclass(cls, (FGCam, LayerFGCam)):
            raise ValueError(
                f"{cls.__name__} wraps a CAM: use method='FG-<CAM>' (FG-CAM at the input, or "
                "at fg_layer with fg_layer=...)."
            )
        if issubclass(cls, LayerCamBase):
            return cls(model, find_layer(model, layer), **_auto_layout(options)), True
        forward = model if issubclass(cls, _OWN) else Logits(model)  # Captum's need a tensor
        if issubclass(cls, LayerAttribution):
            return cls(forward, find_layer(model, layer), **options), True
        return cls(forward, **options), False
    info = registry.find(base_name)
    if info is not None and not info.fg:
        raise ValueError(f"{method}: FG-CAM works over a CAM (FG-Grad-CAM, ...), not {base_name}.")
    cam = method_class(base_name)
    if issubclass(cam, LayerCamBase):
        options = _auto_layout(options)
    base = cam(model, find_layer(model, layer), **options)
    if fg_layer is None:
        return FGCam(base, **(fg_options or {})), False
    return LayerFGCam(base, find_layer(model, fg_layer), **(fg_options or {})), True


def _auto_layout(options: Mapping[str, Any]) -> dict[str, Any]:
    """A CAM's options with ``reshape_transform="auto"`` unless one is given: a
    transformer's tokens and Swin's channels-last maps are read from the model."""
    return {"reshape_transform": AUTO, **options}


#: Attribution classes of this library other than the CAMs (LRP, CLRP, SGLRP), which
#: read a Hugging Face output's logits themselves.
_OWN: tuple[type, ...] = (PropagationLRP,)


def _share_weights(
    model: nn.Module, attribution: Attribution, options: Mapping[str, Any], cache: WeightsCache
) -> None:
    """Attach ``cache`` to the perturbation CAM of ``attribution`` (an FG-CAM's base)."""
    cam = attribution.base_cam if isinstance(attribution, FGCam | LayerFGCam) else attribution
    if not isinstance(cam, WeightedLayerCam) or not cam.uses_perturbations:
        return  # gradient weights cost one backward pass: nothing worth sharing
    layer = next(name for name, m in model.named_modules() if m is cam.layer)
    tag = (
        cache.model_key(model),
        type(cam).__module__,
        type(cam).__qualname__,
        layer,
        digest(sorted(options.items())),
    )
    cache.attach(cam, tag)


def explain(
    model: nn.Module,
    inputs: np.ndarray | Tensor,
    targets: np.ndarray | Tensor | int | list[int],
    *,
    method: str | type = "Grad-CAM",
    layer: str | nn.Module | None = None,
    method_kwargs: Mapping[str, Any] | None = None,
    fg_layer: str | nn.Module | None = None,
    fg_kwargs: Mapping[str, Any] | None = None,
    attribute_kwargs: Mapping[str, Any] | None = None,
    relu_attributions: bool = True,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    weights_cache: WeightsCache | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Attributions of ``method`` for ``inputs``, (N, 1, H, W), as a numpy array.

    Args:
        model: the model (left on its device and in its mode; use eval mode).
        inputs: (N, C, H, W) images (numpy or torch).
        targets: the class of each image (or one for all).
        method: a name (``"Grad-CAM"``, ``"FD-CAM"``, ``"FG-Grad-CAM"`` for FG-CAM over
            Grad-CAM, ``"LayerFDCam"``, a Captum class name such as
            ``"IntegratedGradients"``; see ``captum_fdcam.registry``) or an
            attribution class.
        layer: the layer of layer methods (for ``"FG-"`` names: the base CAM's), a
            module or its name; default: by family (:func:`default_layer_name`: the
            offline model's ``head_activation``, a ViT's last block's first norm, Swin's
            final norm, ConvNeXt's last stage, else the last ``Conv2d``), said once by a
            :class:`~captum_fdcam.errors.DefaultLayerWarning`. The CAMs of this library
            read the layer's layout from the model (``reshape_transform="auto"``) unless
            ``method_kwargs`` gives a ``reshape_transform``.
        method_kwargs: options of the method's constructor; for ``"FG-"`` names, of the
            base CAM's (``group_fraction``, ``perturbations_per_eval``, ...).
        fg_layer: for ``"FG-"`` names: FG-CAM's layer (``LayerFGCam``, shallower than
            ``layer``), a module or its name; default: the input (``FGCam``).
        fg_kwargs: for ``"FG-"`` names: FG-CAM's options (``denoise``,
            ``singular_values``, ``rules``, ...).
        attribute_kwargs: further arguments of ``attribute``.
        relu_attributions: the papers' ReLU on CAM maps (ignored by methods without
            that argument). Default: True
        batch_size: images per ``attribute`` call.
        device: where the inputs go; default: the model's device.
        weights_cache: a :class:`~captum_fdcam.evaluation.memo.WeightsCache` shared by
            calls that explain the same images with the same perturbation CAM at the
            same layer (for ``"FG-"`` names: the base CAM), which then computes its
            channel weights once: FG-Score-CAM at several depths after Score-CAM costs
            the propagations only. The maps are the same with or without it.
        kwargs: other keywords are ignored with a warning (a misspelt option, or
            ``quantus.evaluate``'s ``explain_func_kwargs`` keyed by method name, which
            Quantus passes on flat: give it the options themselves).

    Returns:
        (N, 1, H, W) float32 maps: layer maps upsampled bilinearly to the input size,
        input maps summed over channels.
    """
    if kwargs:
        warnings.warn(
            f"explain ignores the keyword arguments {sorted(kwargs)}.", UserWarning, stacklevel=2
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else "cpu"
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, Tensor) else inputs)
    x = x.to(device=device, dtype=torch.float32 if not x.is_floating_point() else x.dtype)
    if x.dim() != 4:
        raise ValueError(f"inputs must be (N, C, H, W) images, got shape {tuple(x.shape)}.")
    y = torch.as_tensor(np.asarray(targets) if not isinstance(targets, Tensor) else targets)
    y = y.reshape(-1).to(device=device, dtype=torch.long)
    if y.numel() == 1:
        y = y.expand(len(x))
    if len(y) != len(x):
        raise ValueError(f"{len(y)} targets for {len(x)} inputs.")
    attribution, is_layer = _build(model, method, layer, method_kwargs or {}, fg_layer, fg_kwargs)
    if layer is None and (is_layer or isinstance(attribution, FGCam)):
        _default_layer_notice(model)
    if weights_cache is not None:
        _share_weights(model, attribution, method_kwargs or {}, weights_cache)
    options = dict(attribute_kwargs or {})
    if "relu_attributions" in inspect.signature(attribution.attribute).parameters:
        options.setdefault("relu_attributions", relu_attributions)
    maps = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        attr = attribution.attribute(chunk, target=y[start : start + batch_size], **options)
        if is_layer:
            attr = LayerAttribution.interpolate(attr, tuple(chunk.shape[-2:]), "bilinear")
        # Input attributions per colour channel, and layer attributions per channel
        # (Captum's LayerConductance, LayerGradientXActivation, ...): one map each.
        attr = channel_sum(attr)
        maps.append(attr.detach().float().cpu())
    return torch.cat(maps).numpy()
