"""Cloud priors: the interface the restore step calls, the physics and VLM priors, the registry."""

from ._base import BlockLocation, Prior, PriorBlock, SceneParams
from ._combined import CombinedPrior
from ._evidence import CloudEvidence, EvidenceSource, combine_evidence, physics_opinion
from ._physics import PhysicsConfig, PhysicsPrior
from ._registry import (
    available_priors,
    available_sources,
    get_prior,
    register_prior,
    register_source,
)
from ._stack import StackConfig, StackEvidence
from ._vlm import VLMConfig, VLMPrior, attach_stored_prior
from ._vlm_mapping import LabelMapping


def _csmask_source():
    """The learned cloud/shadow mask (``ukis-csmask``, an optional extra: imported on use)."""
    from ._csmask import CSMaskSource

    return CSMaskSource()


register_prior("physics", PhysicsPrior)
register_prior("vlm", VLMPrior)
register_source("stack", StackEvidence)
register_source("csmask", _csmask_source)

#: The prior ``restore`` and the CLI use unless told otherwise (the quality benchmark's best).
DEFAULT_PRIOR = "physics+stack"

__all__ = [
    "DEFAULT_PRIOR",
    "BlockLocation",
    "CloudEvidence",
    "CombinedPrior",
    "EvidenceSource",
    "StackConfig",
    "StackEvidence",
    "available_sources",
    "combine_evidence",
    "physics_opinion",
    "register_source",
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
