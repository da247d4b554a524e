"""Cloud priors: the interface the restore step calls, the physics prior, the registry."""

from ._base import (
    Prior,
    PriorBlock,
    SceneParams,
    available_priors,
    get_prior,
    register_prior,
)
from ._physics import PhysicsConfig, PhysicsPrior

register_prior("physics", PhysicsPrior)

__all__ = [
    "PhysicsConfig",
    "PhysicsPrior",
    "Prior",
    "PriorBlock",
    "SceneParams",
    "available_priors",
    "get_prior",
    "register_prior",
]
