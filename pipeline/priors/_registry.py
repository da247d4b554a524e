"""The prior registry: names -> priors, and '+'-joined combinations with evidence sources.

Kept apart from ``_base`` (the interface) so that the combination (``_combined``), which
builds on the interface, is not imported by it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._base import Prior
from ._combined import CombinedPrior

_REGISTRY: dict[str, Callable[..., Prior]] = {}
_SOURCES: dict[str, Callable[[], Any]] = {}


def register_source(name: str, factory: Callable[[], Any]) -> None:
    """Make ``get_prior("physics+NAME")`` add the evidence source ``factory()``."""
    _SOURCES[name] = factory


def available_sources() -> tuple[str, ...]:
    return tuple(sorted(_SOURCES))


def evidence_source(name: str) -> Any:
    """A registered evidence source by name, with its defaults (``"stack"``, ``"csmask"``)."""
    if name not in _SOURCES:
        raise ValueError(
            f"unknown evidence source {name!r}; valid: {', '.join(available_sources())}"
        )
    return _SOURCES[name]()


def register_prior(name: str, factory: Callable[..., Prior]) -> None:
    """Make ``get_prior(name, **kw)`` build priors with ``factory(**kw)``."""
    _REGISTRY[name] = factory


def available_priors() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_prior(name: str | Prior, **kw: Any) -> Prior:
    """A prior by registry name (with config keywords), or the given ``Prior`` unchanged.

    >>> get_prior("physics", t_min=0.15).name
    'physics'
    """
    if isinstance(name, Prior):
        if kw:
            raise TypeError(
                f"get_prior got a {type(name).__name__} instance and keywords {sorted(kw)}; "
                "pass either a configured Prior or a name with keywords"
            )
        return name
    if isinstance(name, str) and ("+" in name or name in _SOURCES):
        return _combination(name, kw)
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"unknown prior {name!r}; valid names: {', '.join(available_priors())}, or a base "
            f"prior joined by '+' with evidence sources ({', '.join(available_sources())}), "
            "e.g. 'physics+stack' (or pass a pipeline.priors.Prior instance)"
        )
    return _REGISTRY[name](**kw)


def _combination(name: str, kw: dict[str, Any]) -> Prior:
    """'base+source+...' -> CombinedPrior(base(**kw), [sources])."""
    base, *rest = [p.strip() for p in name.split("+")]
    if base in _SOURCES:  # 'stack+csmask': the physics prior is the implied base
        base, rest = "physics", [base, *rest]
    unknown = [p for p in rest if p not in _SOURCES]
    if base not in _REGISTRY or unknown or not rest:
        raise ValueError(
            f"unknown prior combination {name!r}: it must be a base prior "
            f"({', '.join(available_priors())}) followed by evidence sources "
            f"({', '.join(available_sources())}) joined by '+', e.g. 'physics+stack'"
            + (f"; unknown: {unknown}" if unknown else "")
        )
    return CombinedPrior(_REGISTRY[base](**kw), [_SOURCES[s]() for s in rest])
