"""Several methods, each with its own options, scored by several metrics in one
``quantus.evaluate`` call.

``quantus.evaluate`` shares one ``explain_func_kwargs`` between all methods and passes
each method's key as ``method=``; its dict form (``{"FD-CAM": {"explain_func": explain,
...}}``) always explains with Quantus's own ``quantus.explain``, which ignores
``explain_func`` and, without a ``method`` it knows, computes a plain gradient. Here:

* :class:`Explainer` binds one method of this library or of Captum and its options, with
  Quantus's ``explain_func`` signature; the key can then be any name::

      from captum_fdcam.evaluation import Explainer, evaluate

      results = evaluate(
          metrics={"Sparseness": quantus.Sparseness()},
          xai_methods={
              "Grad-CAM": Explainer("Grad-CAM", layer="layer4"),
              "FD-CAM 10%": Explainer("FD-CAM", layer="layer4",
                                      method_kwargs={"group_fraction": 0.1}),
          },
          model=model, x_batch=x, y_batch=y,
      )

* :func:`evaluate` wraps ``quantus.evaluate``: it turns dict-form entries into explain
  functions that run what they say, refuses those that would get Quantus's gradient
  instead, and raises the first metric that fails (``quantus.evaluate`` prints it and
  goes on, then fails with a ``KeyError``).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch import nn

from captum_fdcam import registry
from captum_fdcam.evaluation.explainer import explain, method_class

if TYPE_CHECKING:
    import pandas as pd

#: What ``quantus.evaluate`` passes to each metric itself: not for ``call_kwargs``.
_EVALUATE_PASSES = frozenset(
    {"model", "x_batch", "y_batch", "a_batch", "s_batch", "explain_func", "explain_func_kwargs"}
)
#: Keys of a dict-form entry that are not options of its explain function.
_ENTRY_KEYS = frozenset({"explain_func", "explain_func_kwargs"})


def _explain_options() -> frozenset[str]:
    """The keyword options of :func:`explain` (read from its signature, so that an option
    added there is one here)."""
    parameters = inspect.signature(explain).parameters.values()
    skip = {"model", "inputs", "targets", "method"}
    return frozenset(
        p.name
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip
    )


def _check_method(method: str | type) -> None:
    """Raises what :func:`method_class` raises for a method :func:`explain` cannot run."""
    if isinstance(method, str):
        method = registry.split_fg(method)[0]
    elif not isinstance(method, type):
        raise TypeError(f"method must be a name or an attribution class, got {method!r}.")
    method_class(method)


def _runs(method: str) -> bool:
    """Whether :func:`explain` runs a method of that name."""
    try:
        _check_method(method)
    except (ValueError, TypeError):
        return False
    return True


class Explainer:
    """One method and its options, as a Quantus ``explain_func``.

    ``Explainer(method, **options)(model, inputs, targets, **kwargs)`` is
    ``explain(model, inputs, targets, method=method, **kwargs, **options)``: the bound
    ``options`` win over ``kwargs`` (the ``explain_func_kwargs`` that Quantus shares between
    methods, and the ``device`` its metrics add), and a ``method`` keyword is ignored:
    ``quantus.evaluate`` passes each method's key there, which here is only a name
    (``"FD-CAM (10%)"``). Picklable and copyable as long as the options are.

    Args:
        method: what :func:`~captum_fdcam.evaluation.explain` runs: a name of this library
            (``"FD-CAM"``, ``"FG-Grad-CAM"``, ``"LayerFDCam"``) or of Captum
            (``"IntegratedGradients"``), or an attribution class.
        options: keyword options of :func:`~captum_fdcam.evaluation.explain` (``layer``,
            ``method_kwargs``, ``fg_layer``, ``fg_kwargs``, ``attribute_kwargs``,
            ``relu_attributions``, ``batch_size``, ...). Layers go by module name:
            Quantus's randomisation metrics explain deep copies of the model.

    Raises:
        ValueError: an unknown method name, or a layer given as a module.
        TypeError: an option :func:`~captum_fdcam.evaluation.explain` does not have.
    """

    def __init__(self, method: str | type = "Grad-CAM", **options: Any) -> None:
        _check_method(method)
        unknown = sorted(set(options) - _explain_options())
        if unknown:
            raise TypeError(
                f"Explainer got options that explain does not have: {unknown}; its options "
                f"are {sorted(_explain_options())}."
            )
        for name in ("layer", "fg_layer"):
            if isinstance(options.get(name), nn.Module):
                raise ValueError(
                    f"Pass {name} by module name ({name}='layer4'): a module is that of one "
                    "model, not of the copies Quantus's randomisation metrics explain."
                )
        self.method = method
        self.options: dict[str, Any] = dict(options)

    def __call__(self, model: nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
        kwargs.pop("method", None)  # quantus.evaluate's key: a display name
        return explain(model, inputs, targets, method=self.method, **{**kwargs, **self.options})

    def with_options(self, **options: Any) -> Explainer:
        """The same method with ``options`` added to (or replacing) the bound ones."""
        return Explainer(self.method, **{**self.options, **options})

    def __repr__(self) -> str:
        method = self.method if isinstance(self.method, str) else self.method.__name__
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Explainer({method!r}{options})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Explainer):
            return NotImplemented
        return self.method == other.method and self.options == other.options

    __hash__ = None  # type: ignore[assignment]  # the options are mutable


class _Bound:
    """Another explain function with options bound, which win over the call's keywords
    (``method`` too, when bound)."""

    def __init__(self, func: Callable[..., Any], options: Mapping[str, Any]) -> None:
        self.func = func
        self.options = dict(options)

    def __call__(self, model: Any, inputs: Any, targets: Any, **kwargs: Any) -> Any:
        return self.func(model=model, inputs=inputs, targets=targets, **{**kwargs, **self.options})

    def __repr__(self) -> str:
        name = getattr(self.func, "__qualname__", repr(self.func))
        return f"_Bound({name}, {self.options!r})"


def _quantus_methods() -> frozenset[str]:
    """The ``method`` names Quantus's own ``quantus.explain`` runs with Captum."""
    from quantus.helpers import constants

    return frozenset(constants.AVAILABLE_XAI_METHODS_CAPTUM) | frozenset(
        constants.DEPRECATED_XAI_METHODS_CAPTUM
    )


def _entry_options(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A dict-form entry's options: its ``explain_func_kwargs`` and its other keys."""
    nested = spec.get("explain_func_kwargs") or {}
    if not isinstance(nested, Mapping):
        raise TypeError(f"xai_methods[{name!r}]['explain_func_kwargs'] must be a dict.")
    flat = {k: v for k, v in spec.items() if k not in _ENTRY_KEYS}
    both = sorted(set(nested) & set(flat))
    if both:
        raise ValueError(
            f"xai_methods[{name!r}] gives {both} both in 'explain_func_kwargs' and beside it."
        )
    return {**nested, **flat}


def _from_dict(name: str, spec: Mapping[str, Any]) -> Callable[..., Any]:
    """The explain function that runs what the dict-form entry ``name: spec`` says."""
    import quantus

    func = spec.get("explain_func")
    options = _entry_options(name, spec)
    if func is explain:
        method = options.pop("method", name)
        if not _runs(method):
            raise ValueError(
                f"xai_methods[{name!r}] explains with captum_fdcam's explain, which has no "
                f"method {method!r}: give 'method' (a name of captum_fdcam.registry or of "
                "captum.attr)."
            )
        return Explainer(method, **options)
    if isinstance(func, Explainer):
        if options.get("method", func.method) != func.method:
            raise ValueError(
                f"xai_methods[{name!r}] gives method={options['method']!r} to an Explainer of "
                f"{func.method!r}: an Explainer's method is fixed."
            )
        options.pop("method", None)
        return func.with_options(**options)
    if func is not None and func is not quantus.explain:
        if not callable(func):
            raise TypeError(f"xai_methods[{name!r}]['explain_func'] is not callable.")
        return _Bound(func, options)
    # Quantus's own dict form, which always explains with quantus.explain.
    method = options.get("method")
    if options.get("xai_lib") == "zennit":
        if "attributor" not in options:
            raise ValueError(
                f"xai_methods[{name!r}] asks quantus.explain for zennit without an "
                "'attributor': Quantus would compute a plain gradient."
            )
        return _Bound(quantus.explain, options)
    if method is not None and method in _quantus_methods():
        return _Bound(quantus.explain, options)
    if method is not None:
        options.pop("method")
        if not _runs(method):
            raise ValueError(
                f"xai_methods[{name!r}] has method={method!r}, which neither Quantus's "
                "quantus.explain nor captum_fdcam's explain runs."
            )
        return Explainer(method, **options)
    if _runs(name) and name not in _quantus_methods():
        return Explainer(name, **options)
    raise ValueError(
        f"xai_methods[{name!r}] is a dict with no 'method' and no 'explain_func': "
        "quantus.evaluate would score Quantus's plain 'Gradient' under that name. Give "
        "'explain_func': captum_fdcam.evaluation.explain (or an Explainer) and a 'method', "
        "or 'method' for Quantus's own quantus.explain."
    )


def _explain_funcs(xai_methods: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``xai_methods`` as ``quantus.evaluate``'s callable form (or arrays):
    what :func:`evaluate` passes on. See the rules there.

    Raises:
        ValueError: an entry that would explain with another method than it says (the
            rules of :func:`evaluate`).
        TypeError: an entry that is neither a callable, a dict nor an array.
    """
    if not isinstance(xai_methods, Mapping):
        raise TypeError(f"xai_methods must be a dict of name: method, got {xai_methods!r}.")
    out: dict[str, Any] = {}
    for name, value in xai_methods.items():
        if isinstance(value, np.ndarray):
            out[name] = value
        elif isinstance(value, Mapping):
            out[name] = _from_dict(name, value)
        elif callable(value):
            if value is explain and not _runs(name):
                raise ValueError(
                    f"xai_methods[{name!r}] is captum_fdcam's explain, which quantus.evaluate "
                    f"calls with method={name!r}, not a method it runs: use "
                    f"Explainer(<method>, ...) to keep {name!r} as a display name."
                )
            out[name] = value
        else:
            raise TypeError(
                f"xai_methods[{name!r}] must be an explain function, a dict of options or "
                f"precomputed attributions, got {type(value).__name__}."
            )
    return out


class _Abort(BaseException):
    """Carries a metric's exception through ``quantus.evaluate``, which catches every
    ``Exception`` of a metric and goes on."""

    def __init__(self, method: str, metric: str, error: Exception) -> None:
        super().__init__(method, metric, error)
        self.method, self.metric, self.error = method, metric, error


class _Failed:
    """A metric's result when it failed with ``on_error="nan"``."""


_FAILED = _Failed()


class _Guarded:
    """Calls a metric; raises its failure past ``quantus.evaluate``, or warns and
    returns :data:`_FAILED`."""

    def __init__(self, name: str, metric: Callable[..., Any], on_error: str) -> None:
        self.name, self.metric, self.on_error = name, metric, on_error

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.metric(*args, **kwargs)
        except Exception as error:
            method = str((kwargs.get("explain_func_kwargs") or {}).get("method", "?"))
            if self.on_error == "raise":
                raise _Abort(method, self.name, error) from error
            warnings.warn(
                f"{self.name} failed on {method}, scored nan: {type(error).__name__}: {error}",
                UserWarning,
                stacklevel=2,
            )
            return _FAILED


def evaluate(
    metrics: Mapping[str, Callable[..., Any]],
    xai_methods: Mapping[str, Any],
    model: nn.Module,
    x_batch: np.ndarray,
    y_batch: np.ndarray,
    s_batch: np.ndarray | None = None,
    agg_func: Callable[[Any], Any] | None = None,
    explain_func_kwargs: Mapping[str, Any] | None = None,
    call_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    return_as_df: bool | None = None,
    verbose: bool | None = None,
    *,
    on_error: Literal["raise", "nan"] = "raise",
) -> dict[str, Any] | pd.DataFrame:
    """``quantus.evaluate`` with per-method options, dict-form entries that explain what
    they say, and failures raised.

    The arguments and the result are ``quantus.evaluate``'s. Each entry of
    ``xai_methods`` becomes:

    * an explain function (an :class:`Explainer`, :func:`explain` itself, your own),
      precomputed attributions: as is (``quantus.evaluate`` passes the key as
      ``method=``, which an :class:`Explainer` ignores and :func:`explain` runs, so a
      key given to :func:`explain` must be a method name);
    * ``{"explain_func": explain, **options}``: ``Explainer(options["method"] or the key,
      **options)``; ``{"explain_func": an Explainer, **options}``: that one with the
      options added; ``{"explain_func": f, **options}``: ``f`` with the options bound;
    * with no ``explain_func`` (or ``quantus.explain``), Quantus's own dict form:
      ``{"method": m, ...}`` with ``m`` a method Quantus's ``quantus.explain`` knows
      (``"Saliency"``, ``"IntegratedGradients"``, ``"LayerGradCam"``, ...), or
      ``{"xai_lib": "zennit", "attributor": ...}``: ``quantus.explain`` with these options,
      for the maps and for the metrics that explain again; another ``m``:
      ``Explainer(m, **options)``; no ``method`` and a key that :func:`explain` runs and
      ``quantus.explain`` does not know (``{"FD-CAM": {"layer": "layer4"}}``):
      ``Explainer(key, **options)``; anything else is refused, where
      ``quantus.evaluate`` would score a plain gradient.

    The options of a dict-form entry are its ``explain_func_kwargs`` and its other keys;
    every entry's own options win over the shared ``explain_func_kwargs``.

    Args:
        metrics: ``{name: metric}``, Quantus metrics (or any metric callable).
        xai_methods: ``{name: method}`` as above.
        model, x_batch, y_batch, s_batch, agg_func, call_kwargs, return_as_df, verbose:
            as ``quantus.evaluate``'s (``agg_func``: default, the scores as they are).
        explain_func_kwargs: options shared by every method (under each one's own).
        on_error: ``"raise"``: the first metric that fails stops the run with a
            ``RuntimeError`` naming the method and the metric, from the metric's
            exception; ``"nan"``: a warning, and ``nan`` for that score.

    Raises:
        ValueError: an entry refused as above, ``method`` in ``explain_func_kwargs``
            (``quantus.evaluate`` replaces it by each key), or ``call_kwargs`` that hold
            an argument ``quantus.evaluate`` passes itself.
        RuntimeError: a metric failed (``on_error="raise"``).
    """
    import quantus

    if on_error not in ("raise", "nan"):
        raise ValueError(f"on_error must be 'raise' or 'nan', got {on_error!r}.")
    if not isinstance(metrics, Mapping) or not metrics:
        raise TypeError("metrics must be a non-empty dict of name: metric.")
    shared = dict(explain_func_kwargs or {})
    if "method" in shared:
        raise ValueError(
            "explain_func_kwargs holds 'method', which quantus.evaluate replaces by each "
            "entry's key: give each method as an entry (Explainer(method, ...))."
        )
    for set_name, values in (call_kwargs or {}).items():
        clash = sorted(_EVALUATE_PASSES & set(values))
        if clash:
            raise ValueError(
                f"call_kwargs[{set_name!r}] holds {clash}, which quantus.evaluate passes itself."
            )
    methods = _explain_funcs(xai_methods)
    aggregate = agg_func if agg_func is not None else (lambda scores: scores)

    def agg(scores: Any) -> Any:
        return float("nan") if scores is _FAILED else aggregate(scores)

    extra: dict[str, Any] = {}
    if return_as_df is not None:
        extra["return_as_df"] = return_as_df
    if verbose is not None:
        extra["verbose"] = verbose
    try:
        return quantus.evaluate(
            metrics={name: _Guarded(name, m, on_error) for name, m in metrics.items()},
            xai_methods=methods,
            model=model,
            x_batch=x_batch,
            y_batch=y_batch,
            s_batch=s_batch,
            agg_func=agg,
            explain_func_kwargs=shared,
            call_kwargs={k: dict(v) for k, v in call_kwargs.items()} if call_kwargs else None,
            **extra,
        )
    except _Abort as abort:
        raise RuntimeError(
            f"quantus.evaluate: {abort.metric} failed on {abort.method}: "
            f"{type(abort.error).__name__}: {abort.error}"
        ) from abort.error
