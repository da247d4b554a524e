"""Cloud priors: the interface the restore step calls, the physics and VLM priors, the registry."""

from ._base import (
    BlockLocation,
    Prior,
    PriorBlock,
    SceneParams,
    available_priors,
    get_prior,
    register_prior,
)
from ._physics import PhysicsConfig, PhysicsPrior
from ._vlm import VLMConfig, VLMPrior, attach_stored_prior
from ._vlm_mapping import LabelMapping

register_prior("physics", PhysicsPrior)
register_prior("vlm", VLMPrior)

__all__ = [
    "BlockLocation",
    "LabelMapping",
    "PhysicsConfig",
    "PhysicsPrior",
    "Prior",
    "PriorBlock",
    "SceneParams",
    "VLMConfig",
    "VLMPrior",
    "attach_stored_prior",
    "available_priors",
    "get_prior",
    "register_prior",
]
