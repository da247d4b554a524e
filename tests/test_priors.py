"""The prior interface, the physics prior and the registry."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import xarray as xr
from dask.base import tokenize

from pipeline.kernels import band_transmission, forward_model, invert, wavelengths_of
from pipeline.priors import (
    PhysicsConfig,
    PhysicsPrior,
    Prior,
    PriorBlock,
    SceneParams,
    available_priors,
    get_prior,
)
from tests.test_kernels import BANDS6, make_surface, smooth_field


def test_registry_builds_physics_prior_with_config_keywords():
    prior = get_prior("physics", t_min=0.15, window_radius=2)
    assert isinstance(prior, PhysicsPrior) and prior.name == "physics"
    assert prior.config.t_min == 0.15 and prior.halo == 4
    assert "physics" in available_priors()
    assert get_prior(prior) is prior


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="valid names: physics"):
        get_prior("qwen-magic")
    with pytest.raises(TypeError, match="valid:.*t_min"):
        get_prior("physics", tmin=0.1)
    with pytest.raises(TypeError, match="instance and keywords"):
        get_prior(PhysicsPrior(), t_min=0.2)


def test_config_is_frozen_validated_and_params_are_json():
    cfg = PhysicsConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.t_min = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError, match="t_min"):
        PhysicsConfig(t_min=0.0)
    params = PhysicsPrior(cfg).params()
    assert json.loads(json.dumps(params)) == params


def test_tokenize_is_deterministic_and_config_sensitive():
    assert tokenize(PhysicsPrior()) == tokenize(PhysicsPrior())
    assert tokenize(PhysicsPrior()) != tokenize(PhysicsPrior(t_min=0.2))


SAND = np.array([0.25, 0.33, 0.40, 0.45, 0.55, 0.5], np.float32)


def _stack(seed: int = 0, sand: bool = False):
    ny = nx = 48
    rng = np.random.default_rng(seed)
    surf = make_surface(BANDS6, ny, nx, seed)
    if sand:  # a bright static surface (sand/roof), under the thin haze of date 1 too
        surf[:, 30:40, 30:40] = SAND[:, None, None]
    t = np.ones((3, ny, nx), np.float32)
    t[1] = np.clip(0.7 + 0.15 * smooth_field(rng, (ny, nx), 8), 0.4, 1.0)
    t[2, 10:25, 10:30] = 0.0
    airlight = np.tile(np.array([0.9, 0.88, 0.86, 0.8, 0.6, 0.45], np.float32), (3, 1))
    t_b = band_transmission(t, wavelengths_of(BANDS6), np.array([1.0, 1.2, 0.0], np.float32))
    obs = forward_model(np.broadcast_to(surf, (3,) + surf.shape), airlight, t_b)
    return obs, surf, t


def test_physics_prior_scene_and_block_shapes_and_quality():
    obs, surf, t = _stack()
    prior = PhysicsPrior()
    scene = prior.estimate_scene(obs.reshape(3, 6, -1), BANDS6)
    assert isinstance(scene, SceneParams)
    assert scene.airlight.shape == (3, 6) and scene.gamma.shape == (3,)
    res = prior.block(obs, BANDS6, scene)
    assert isinstance(res, PriorBlock)
    for arr in res[:4]:
        assert arr.dtype == np.float32
    assert res.evidence is None  # the physics prior alone has no evidence sources
    assert res.transmission.shape == (3, 48, 48) and res.surface.shape == obs.shape
    # clear date: t ~ 1, the inversion is the identity, full confidence
    assert res.transmission[0].min() > 0.97
    assert np.abs(res.surface[0] - surf).max() < 0.03
    assert res.confidence[0].min() > 0.99
    # opaque cloud: t ~ 0 and no confidence; thin haze: t tracks the truth
    assert res.transmission[2, 12:23, 12:28].max() < 0.05
    assert res.confidence[2, 12:23, 12:28].max() == 0.0
    assert np.abs(res.transmission[1] - t[1]).mean() < 0.08
    assert np.all((res.confidence >= 0) & (res.confidence <= 1))
    sample = prior.sample_block(obs.reshape(3, 6, -1), BANDS6, scene)
    assert sample.transmission.shape == (3, 48 * 48)


def test_bright_static_surface_is_not_mistaken_for_cloud():
    obs, surf, t = _stack(sand=True)
    prior = PhysicsPrior()
    scene = prior.estimate_scene(obs.reshape(3, 6, -1), BANDS6)
    res = prior.block(obs, BANDS6, scene)
    assert res.transmission[[0, 2], 30:40, 30:40].min() > 0.95
    assert res.confidence[[0, 2], 30:40, 30:40].min() > 0.95
    # under thin haze the sand is inverted, not darkened as a dark-channel prior would
    assert np.abs(res.surface[1, :, 30:40, 30:40] - surf[:, 30:40, 30:40]).mean() < 0.03


class _ScaledConfidencePrior(Prior):
    """Stand-in for a VLM prior: refines the physics prior's confidence per block."""

    name = "scaled"

    def __init__(self, factor: float = 0.5) -> None:
        self.factor = factor
        self.physics = PhysicsPrior()

    def params(self):
        return {"factor": self.factor, "physics": self.physics.params()}

    @property
    def halo(self) -> int:
        return self.physics.halo

    def estimate_scene(self, sample, bands, scl=None):
        return self.physics.estimate_scene(sample, bands, scl)

    def block(self, data, bands, scene, scl=None):
        base = self.physics.block(data, bands, scene, scl)
        conf = (base.confidence * self.factor).astype(np.float32)
        surface = invert(data, scene.airlight, base.band_transmission)
        return PriorBlock(base.transmission, base.band_transmission, conf, surface)


def test_a_refining_prior_plugs_into_restore():
    from pipeline.restore import restore

    obs, *_ = _stack()
    cube = xr.Dataset(
        {b: (("time", "y", "x"), obs[:, k]) for k, b in enumerate(BANDS6)},
        coords={"time": np.array(["2024-05-01", "2024-05-11", "2024-05-21"], "datetime64[ns]")},
    )
    out = restore(cube, prior=_ScaledConfidencePrior(0.5))
    assert out.attrs["prior"] == "scaled"
    assert json.loads(out.attrs["prior_params"])["factor"] == 0.5
    assert float(out.confidence.max()) <= 0.5 + 1e-6
