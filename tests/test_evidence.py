"""Cloud evidence: the stack source, the log-odds combination, and what the fusion does with it.

The stacks are built with the forward model from known surfaces, so every expectation comes
from the physics of the case (which date is hazy, which pixel is clear), not from the code.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipeline.kernels import band_transmission, forward_model, wavelengths_of
from pipeline.kernels._evidence import (
    dark_outliers,
    haze_excess,
    lower_envelope,
    scene_haze_excess,
    scene_transmission_ceiling,
    stack_evidence,
)
from pipeline.kernels._fusion import FusionConfig
from pipeline.kernels._inversion import _shrink_correction
from pipeline.priors import (
    CloudEvidence,
    CombinedPrior,
    PhysicsPrior,
    StackEvidence,
    combine_evidence,
    get_prior,
)
from pipeline.restore import restore
from tests.test_kernels import BANDS6, make_surface, smooth_field

# Snow and bare-soil spectra at B02 B03 B04 B08 B11 B12 (fresh snow: dark in SWIR).
SNOW = np.array([0.85, 0.86, 0.85, 0.80, 0.08, 0.06], np.float32)
SOIL = np.array([0.10, 0.14, 0.20, 0.28, 0.38, 0.32], np.float32)
HAZE_LIGHT = np.array([0.32, 0.30, 0.28, 0.26, 0.2, 0.15], np.float32)


def _series(n_dates: int = 8, size: int = 40, seed: int = 0) -> np.ndarray:
    """(T, B, Y, X) clear observations of one static surface with 0.004 noise per date."""
    rng = np.random.default_rng(seed)
    surf = make_surface(BANDS6, size, size, seed)
    obs = np.broadcast_to(surf, (n_dates,) + surf.shape).copy()
    obs += rng.normal(0, 0.004, obs.shape).astype(np.float32)
    return np.clip(obs, 0.001, None)


def _haze(obs: np.ndarray, t_ref: float, gamma: float = 1.3) -> np.ndarray:
    """The same surface under scene-wide haze of transmission t_ref at 490 nm."""
    t = np.full((1,) + obs.shape[1:], t_ref, np.float32)
    t_b = band_transmission(t, wavelengths_of(BANDS6), np.array([gamma], np.float32))
    return forward_model(obs[None], HAZE_LIGHT[None], t_b)[0]


# --------------------------------------------------------------------------- kernels


def test_lower_envelope_is_the_lower_quantile_of_the_valid_dates():
    rng = np.random.default_rng(1)
    v = rng.random((9, 5, 6))
    v[rng.random(v.shape) < 0.2] = np.nan
    got = lower_envelope(v, 0.25)
    for y in range(5):
        for x in range(6):
            col = np.sort(v[:, y, x][np.isfinite(v[:, y, x])])
            if col.size == 0:
                assert np.isnan(got[y, x])
            else:
                assert got[y, x] == col[int(np.floor(0.25 * (col.size - 1)))]


def test_a_date_hazy_over_the_whole_scene_reads_as_not_clear():
    obs = _series()
    obs[3] = _haze(obs[3], 0.75)  # blue about doubles on vegetation, as the real case
    p_cloud, _ = stack_evidence(
        obs,
        BANDS6,
        scene_excess=scene_haze_excess(obs.reshape(obs.shape[0], obs.shape[1], -1), BANDS6),
    )
    assert (p_cloud[3] >= 0.5).mean() >= 0.95
    others = np.delete(p_cloud, 3, axis=0)
    assert (others < 0.5).mean() >= 0.95


def test_the_dark_object_excess_finds_the_scene_wide_haze_date():
    obs = _series()
    obs[5] = _haze(obs[5], 0.7)
    excess = scene_haze_excess(obs.reshape(obs.shape[0], obs.shape[1], -1), BANDS6)
    assert np.argmax(excess) == 5 and excess[5] > 0.03
    assert np.delete(excess, 5).max() < 0.01


def test_the_dark_object_excess_bounds_a_hazy_dates_transmission():
    """Path radiance lifts a hazy date's darkest surfaces by (A - D)(1 - t): read back as a
    ceiling of t, it is the haze's own transmission; clear dates keep t = 1."""
    obs = _series()
    obs[5] = _haze(obs[5], 0.6)
    sample = obs.reshape(obs.shape[0], obs.shape[1], -1)
    excess = scene_haze_excess(sample, BANDS6)
    dark = float(np.percentile(sample[:, 0].min(axis=0), 1.0))
    light = np.full(obs.shape[0], HAZE_LIGHT[0])
    exact = scene_transmission_ceiling(excess, light, dark, tolerance=0.0)
    assert exact[5] == pytest.approx(0.6, abs=0.03)
    tolerant = scene_transmission_ceiling(excess, light, dark, tolerance=0.02)
    assert np.all(np.delete(tolerant, 5) == 1.0)
    assert exact[5] < tolerant[5] < 1.0
    # no bound where the excess is unknown or the airlight is no brighter than the dark object
    assert scene_transmission_ceiling(np.array([np.nan]), np.array([0.3]), 0.01, 0.0)[0] == 1.0
    assert scene_transmission_ceiling(np.array([0.2]), np.array([0.01]), 0.01, 0.0)[0] == 1.0


def test_a_date_under_snow_everywhere_is_no_overcast():
    """Snow has no dark surface either: its dates keep t unbounded (the overcast date's
    ceiling, by the same dark-object excess, is low)."""
    from pipeline.priors._physics import SCENE_T_CEILING

    obs = _series(n_dates=4, seed=2)
    rng = np.random.default_rng(2)
    obs[1] = SNOW[:, None, None] * (1.0 + 0.02 * rng.standard_normal(obs.shape[2:]))
    obs[2] = _overcast(obs[2], 0.1)
    scene = PhysicsPrior().estimate_scene(obs.reshape(4, obs.shape[1], -1), BANDS6)
    ceiling = scene.extras[SCENE_T_CEILING]
    assert ceiling[1] == 1.0 and ceiling[0] == 1.0 and ceiling[3] == 1.0
    assert ceiling[2] < 0.5


def test_the_clear_pixels_around_a_thick_cloud_stay_clear():
    """The haze index is smoothed over 3 x 3 pixels against noise; a clear pixel beside a
    thick cloud must not inherit the cloud's excess (it took a third of it from the window
    and read as cloud: a one-pixel ring of false cloud around every cloud)."""
    obs = _series()
    obs[4][:, 10:30, 10:30] = 0.9 * 0.8 + 0.1 * obs[4][:, 10:30, 10:30]  # thick grey cloud
    p_cloud, _ = stack_evidence(obs, BANDS6)
    assert p_cloud[4][12:28, 12:28].min() > 0.95
    ring = np.zeros((40, 40), bool)
    ring[9:31, 9:31] = True
    ring[10:30, 10:30] = False  # the pixels that touch the cloud, outside it
    assert p_cloud[4][ring].max() < 0.5


def test_surface_changes_are_not_cloud_but_thick_cloud_is():
    obs = _series()
    field = (slice(5, 20), slice(5, 20))
    obs[6][:, field[0], field[1]] = SOIL[:, None, None]  # harvest: brighter, redder
    obs[2][:, field[0], field[1]] *= 1.3  # green-up / seasonal brightening of the field
    obs[4][:, 25:35, 25:35] = 0.9 * 0.8 + 0.1 * obs[4][:, 25:35, 25:35]  # thick grey cloud
    p_cloud, _ = stack_evidence(obs, BANDS6)
    assert p_cloud[6][field].max() < 0.5
    assert p_cloud[4][27:33, 27:33].min() > 0.95


def test_snow_is_not_cloud_when_swir_bands_exist():
    obs = _series()
    obs[1][:, :20] = SNOW[:, None, None]
    p_cloud, _ = stack_evidence(obs, BANDS6)
    assert p_cloud[1][2:18, 2:-2].max() < 0.1


def test_melting_snow_is_not_cloud_but_cloud_over_a_snowy_series_is():
    """Patchy snow mixes snow with the ground below: the visible rises, the SWIR falls (ice
    absorbs there), the NIR rises less than the visible. No cloud does that, so a snow-melt
    date over soil or rock (bright in the SWIR) is clear although its NDSI is too low for the
    snow test (over a ground dark in the SWIR the NDSI test catches it). A grey cloud over the
    same series still reads as cloud (it brightens the SWIR)."""
    rng = np.random.default_rng(1)
    obs = _series(n_dates=12)
    obs[:, :, :, :20] = SOIL[None, :, None, None] * rng.uniform(0.9, 1.1, (1, 1, 40, 20))
    obs[0, :, :, :20] = SNOW[:, None, None]  # snow on the first date
    obs[1][:, :, :20] = 0.4 * SNOW[:, None, None] + 0.6 * obs[4][:, :, :20]  # 40 % left
    ndsi = (obs[1][1] - obs[1][4]) / (obs[1][1] + obs[1][4])
    assert ndsi[:, :20].max() < 0.4  # below the snow test's NDSI ramp: only the change tells
    obs[5][:, 5:15, 5:15] = 0.9 * 0.8 + 0.1 * obs[5][:, 5:15, 5:15]  # thick grey cloud
    p_cloud, _ = stack_evidence(obs, BANDS6)
    assert p_cloud[1][2:-2, 2:18].max() < 0.2
    assert p_cloud[5][7:13, 7:13].min() > 0.95


def test_half_melted_snow_after_a_snowy_season_is_not_cloud():
    """Snow lay on the first five of twelve dates, more than the envelope's quarter: per band
    the SWIR envelope would be the snow's (dark there) while the blue one is the ground's, so a
    date with 40 % snow left (visible up, SWIR back near the soil's) would read as a SWIR rise,
    the mark of water cloud, over a spectrum no date ever had. Against the snow-free dates'
    envelope it is what it is: the visible up and the SWIR down, snow. A grey cloud on a
    snow-free date of the same series still reads as cloud."""
    rng = np.random.default_rng(2)
    obs = _series(n_dates=12)
    obs[:] = SOIL[None, :, None, None] * rng.uniform(0.9, 1.1, (12, 1, 40, 40))
    obs[:5] = SNOW[None, :, None, None]  # a snowy season
    obs[5] = 0.4 * SNOW[:, None, None] + 0.6 * obs[6]  # 40 % of the snow left
    ndsi = (obs[5][1] - obs[5][4]) / (obs[5][1] + obs[5][4])
    assert ndsi.max() < 0.4  # below the snow test's NDSI ramp: only the change tells
    obs[8][:, 5:15, 5:15] = 0.9 * 0.8 + 0.1 * obs[8][:, 5:15, 5:15]  # thick grey cloud
    p_cloud, _ = stack_evidence(obs, BANDS6)
    melted = p_cloud[5][2:-2, 2:-2]
    assert np.median(melted) < 0.05
    assert melted.max() < 0.5  # clear by the run's reading (CLOUDY_AT) everywhere
    assert p_cloud[8][7:13, 7:13].min() > 0.95


def test_old_snow_melting_over_a_meadow_is_not_cloud_thin_cloud_over_it_is():
    """Aged wet snow (visible ~0.6, SWIR ~0.12) half melted over a meadow whose SWIR is
    brighter (0.22): against the meadow the visible rises and the SWIR falls by 0.18 of the
    blue's rise, beyond the ~0.1 that any cloud or haze takes off there. It read as cloud
    while the ice test's ramp started at 0.15 (0.1 of the way up at 0.18)."""
    meadow = np.array([0.04, 0.07, 0.05, 0.30, 0.22, 0.13], np.float32)
    old_snow = np.array([0.60, 0.60, 0.58, 0.55, 0.12, 0.09], np.float32)
    rng = np.random.default_rng(4)
    obs = np.broadcast_to(meadow[None, :, None, None], (8, 6, 30, 30)).copy()
    obs += rng.normal(0, 0.003, obs.shape).astype(np.float32)
    patch = (slice(5, 15), slice(5, 15))
    obs[5][:, patch[0], patch[1]] = (0.5 * old_snow + 0.5 * meadow)[:, None, None]
    veil = (slice(18, 28), slice(18, 28))  # thin water cloud over the meadow, another date
    obs[3][:, veil[0], veil[1]] = (0.6 * meadow + 0.4 * 0.7)[:, None, None]
    p_cloud, _ = stack_evidence(np.clip(obs, 0.001, None), BANDS6)
    assert (p_cloud[5][patch] < 0.5).mean() > 0.95
    assert (p_cloud[3][veil] > 0.5).mean() > 0.95


def test_cloud_shadow_is_a_uniform_darkening_snow_melt_is_not():
    obs = _series()
    # shadow: every band x 0.4-0.3 (diffuse light), on date 3
    factor = np.linspace(0.45, 0.3, len(BANDS6)).astype(np.float32)[:, None, None]
    obs[3][:, 5:15, 5:15] *= factor
    # snow melt: snow on dates 0-5 in the right half, none on dates 6-7
    obs[:6, :, :, 25:] = SNOW[None, :, None, None]
    _, p_shadow = stack_evidence(obs, BANDS6)
    assert p_shadow[3][7:13, 7:13].min() > 0.5
    assert p_shadow[6:, :, 27:].max() < 0.05


# Open water at B02 B03 B04 B08 B11 B12: dark everywhere, darkest in the NIR and SWIR.
WATER = np.array([0.05, 0.04, 0.03, 0.015, 0.01, 0.008], np.float32)


def test_a_shadow_on_snow_is_a_shadow_melt_onto_water_is_not():
    """Against a snowy median a uniform darkening is either a cloud shadow on the snow or
    melt onto dark water; only the shadowed snow is still snow (NDSI high, NIR bright)."""
    rng = np.random.default_rng(2)
    obs = np.broadcast_to(SNOW[None, :, None, None], (8, 6, 20, 40)).copy()
    obs += rng.normal(0, 0.004, obs.shape).astype(np.float32)
    factor = np.linspace(0.4, 0.3, len(BANDS6)).astype(np.float32)[:, None, None]
    obs[3][:, 5:15, 5:15] *= factor  # a cloud shadow on the snow, date 3
    obs[3][:, :, 25:] = WATER[:, None, None]  # the right half melted onto a lake, date 3
    _, p_shadow = stack_evidence(obs, BANDS6)
    assert p_shadow[3][7:13, 7:13].min() > 0.5  # 0 while any snowy median vetoed the test
    assert p_shadow[3][:, 27:].max() < 0.05
    assert p_shadow[[0, 1, 2, 4, 5, 6, 7]].max() < 0.05


def test_shadows_on_a_third_of_the_dates_do_not_make_the_clear_dates_read_as_haze():
    """A low quantile is robust to cloud, not to shadow: with cloud shadows on 3 of 9 dates
    at a pixel they *were* its clear-sky baseline, every clear date read as haze and was
    replaced (the demo stack's worst clear pixels, a bright surface under frequent shadow).
    The shadowed dates still read as shadow, and a thick cloud on another date as cloud."""
    obs = _series(n_dates=9)
    obs[:, :, :, :] = np.maximum(obs, 0.35)  # a bright surface: shadow darkens it most
    factor = np.linspace(0.45, 0.3, len(BANDS6)).astype(np.float32)[:, None, None]
    for t in (1, 4, 6):
        obs[t][:, 5:35, 5:35] *= factor
    obs[8][:, 15:25, 15:25] = 0.8  # thick cloud, grey
    p_cloud, p_shadow = stack_evidence(obs, BANDS6)
    clear = [0, 2, 3, 5, 7]
    assert p_cloud[clear][:, 7:33, 7:33].max() < 0.2
    for t in (1, 4, 6):
        assert p_shadow[t][7:33, 7:33].min() > 0.5
    assert p_cloud[8][17:23, 17:23].min() > 0.95


def test_a_shadow_is_darker_in_the_infrared_the_ground_under_a_veil_is_not():
    """Against a median of veiled dates (a grey veil of 0.18 over the ground on four of
    seven), the clear ground is darker in every band and nearly uniformly so, but most in the
    visible; a cloud shadow, lit by blue skylight, is darkest in the infrared. Only the
    shadow may leave the clear-sky baseline."""
    obs = np.empty((7, len(BANDS6), 4, 4), np.float32)
    obs[:] = SOIL[None, :, None, None]
    obs[3:] += 0.18
    factor = np.linspace(0.45, 0.3, len(BANDS6)).astype(np.float32)
    shadowed = obs.copy()
    shadowed[:] = SOIL[None, :, None, None]
    shadowed[[1, 4]] *= factor[None, :, None, None]
    kw = {"darkening": (0.2, 0.5), "spread": (0.3, 0.6)}
    assert not dark_outliers(obs, BANDS6, **kw).any()
    flagged = dark_outliers(shadowed, BANDS6, **kw)
    assert flagged[[1, 4]].all() and not flagged[[0, 2, 3, 5, 6]].any()


def test_the_ground_after_a_snowy_season_is_no_shadow_and_a_cloud_over_it_stays_cloud():
    """The snow-free ground after a snowy season is darker than a median of snow: against
    the snow-free dates it is no outlier, stays in the baseline and reads clear, and a thick
    cloud over it reads as cloud."""
    obs = _series(n_dates=9)
    obs[:4] = SNOW[None, :, None, None]
    obs[4:7] = SOIL[None, :, None, None] + obs[4:7] * 0.01
    obs[7:] = 0.8  # thick cloud over the melted ground on the last two dates
    p_cloud, p_shadow = stack_evidence(obs, BANDS6)
    assert p_cloud[7:, 2:-2, 2:-2].min() > 0.95
    assert p_cloud[4:7, 2:-2, 2:-2].max() < 0.2
    assert p_shadow[4:7].max() < 0.05


def test_dates_left_out_of_the_baseline_lift_it_at_most_to_the_usual_level():
    """Snow on four dates, the ground on two, a thick cloud on the last. Were the ground dates
    left out of the baseline (as outliers), the rest would set it at the snow's blue and the
    cloud would read as clear; the lift stops at the median of the snow-free dates."""
    obs = np.empty((7, len(BANDS6), 4, 4), np.float32)
    obs[:4] = SNOW[None, :, None, None]
    obs[4:6] = SOIL[None, :, None, None]
    obs[6] = 0.8
    observed = np.ones(obs.shape[:1] + obs.shape[2:], bool)
    without_ground = observed.copy()
    without_ground[4:6] = False
    snow_free = observed.copy()
    snow_free[:4] = False
    lifted = haze_excess(obs, BANDS6, 0.25, 0, without_ground)
    assert lifted[6].max() < 0.0  # the failure the lift's bound prevents
    bounded = haze_excess(obs, BANDS6, 0.25, 0, without_ground, snow_free)
    # the cloud's excess over the ground: min(dB, 2 dH), HOT = (1.5 B02 - B04) / sqrt(3.25)
    hot = lambda blue, red: (1.5 * blue - red) / np.sqrt(3.25)  # noqa: E731
    expected = min(0.8 - SOIL[0], 2 * (hot(0.8, 0.8) - hot(SOIL[0], SOIL[2])))
    np.testing.assert_allclose(bounded[6], expected, atol=1e-6)
    np.testing.assert_allclose(bounded[4:6], 0.0, atol=1e-6)


def test_mowing_is_not_a_shadow_though_most_bands_darken():
    """A mown or ploughed field loses its NIR (and some SWIR) while the visible stays: most
    bands darken, on average as much as under a shadow, but a shadow darkens every band."""
    obs = _series()
    field = (slice(5, 15), slice(5, 15))
    nir_like = [BANDS6.index(b) for b in ("B08", "B11", "B12")]
    obs[6][nir_like, field[0], field[1]] *= np.array([0.35, 0.5, 0.5], np.float32)[:, None, None]
    factor = np.linspace(0.45, 0.3, len(BANDS6)).astype(np.float32)[:, None, None]
    obs[3][:, 25:35, 25:35] *= factor  # a cloud shadow on another date
    _, p_shadow = stack_evidence(obs, BANDS6)
    assert p_shadow[6][7:13, 7:13].max() < 0.05
    assert p_shadow[3][27:33, 27:33].min() > 0.5


def test_a_single_date_gives_no_stack_opinion_and_two_dates_a_weak_one():
    obs = _series(n_dates=2)
    p1, _ = stack_evidence(obs[:1], BANDS6)
    assert np.isnan(p1).all()
    p2, _ = stack_evidence(obs, BANDS6)
    assert p2.min() >= 0.3 - 1e-6  # a lower envelope of two dates may itself be cloudy


def test_a_date_no_other_date_shows_clear_has_no_shadow_opinion():
    """The shadow test reads a date against the clear dates' median: where the date is the
    only clear one it would be its own yardstick and read "no shadow", outvoting a source
    that sees the shadow on that date alone."""
    obs = _series(n_dates=2)
    obs[0][:, 5:15, 5:15] *= np.linspace(0.45, 0.3, len(BANDS6)).astype(np.float32)[:, None, None]
    obs[1][:, :, 20:] = 0.8  # the other date overcast on the right half
    _, single = stack_evidence(obs[:1], BANDS6)
    assert np.isnan(single).all()
    _, pair = stack_evidence(obs, BANDS6)
    assert np.isnan(pair[0][:, 20:]).all()  # only date 0 is clear there
    assert np.isfinite(pair[0][:, :20]).all()  # date 1 is a yardstick here
    # with no opinion from the stack, a source that sees the shadow on the one date stands
    sees = CloudEvidence(np.full(single.shape, 0.1, np.float32), np.full(single.shape, 0.9))
    fused = combine_evidence(
        [(1.0, CloudEvidence(np.full(single.shape, np.nan), single)), (1.0, sees)], single.shape
    )
    np.testing.assert_allclose(fused.shadow, 0.9, rtol=1e-5)


def test_the_stack_source_without_blue_or_red_has_no_opinion():
    src = StackEvidence()
    obs = _series(n_dates=3)[:, [3, 4]]  # B08 and B11 only
    scene = PhysicsPrior().estimate_scene(obs.reshape(3, 2, -1), ("B08", "B11"))
    from pipeline.priors import BlockLocation

    ev = src.evidence(obs, ("B08", "B11"), scene, BlockLocation((0, 0), obs.shape[2:]))
    assert np.isnan(ev.cloud).all()


def test_haze_excess_rejects_cubes_without_blue_and_red():
    with pytest.raises(ValueError, match="B02.*B04"):
        haze_excess(np.zeros((2, 1, 3, 3)), ("B08",), 0.25, 1)


# --------------------------------------------------------------------------- combination


def test_log_odds_combination_lets_every_source_raise_or_lower_the_belief():
    shape = (1, 1, 3)
    cloudy = CloudEvidence(np.full(shape, 0.9, np.float32))
    clear = CloudEvidence(np.full(shape, 0.1, np.float32))
    silent = CloudEvidence(np.full(shape, np.nan, np.float32))
    # two independent sources at 0.9: odds 9 x 9 = 81 -> 81 / 82
    np.testing.assert_allclose(
        combine_evidence([(1, cloudy), (1, cloudy)], shape).cloud, 81 / 82, rtol=1e-5
    )
    # a clear opinion lowers a cloudy one to even
    np.testing.assert_allclose(
        combine_evidence([(1, cloudy), (1, clear)], shape).cloud, 0.5, atol=1e-6
    )
    # half weight: odds 9 ** 0.5 = 3 -> 0.75
    np.testing.assert_allclose(combine_evidence([(0.5, cloudy)], shape).cloud, 0.75, rtol=1e-5)
    # a source without an opinion adds nothing; no opinion anywhere stays NaN
    np.testing.assert_allclose(
        combine_evidence([(1, cloudy), (1, silent)], shape).cloud, 0.9, rtol=1e-5
    )
    assert np.isnan(combine_evidence([(1, silent)], shape).cloud).all()


def test_prior_combinations_by_name():
    prior = get_prior("physics+stack", t_min=0.15)
    assert isinstance(prior, CombinedPrior) and prior.name == "physics+stack"
    assert prior.base.config.t_min == 0.15 and [s.name for s in prior.sources] == ["stack"]
    assert get_prior("stack").name == "physics+stack"  # the physics prior is implied
    with pytest.raises(ValueError, match="evidence sources.*stack"):
        get_prior("physics+magic")
    with pytest.raises(ValueError, match="physics\\+stack"):
        get_prior("qwen")


# --------------------------------------------------------------------------- fusion


def _cube(obs: np.ndarray, days, bands: tuple[str, ...] = BANDS6) -> xr.Dataset:
    time = np.datetime64("2024-05-01") + np.asarray(days).astype("timedelta64[D]")
    return xr.Dataset(
        {b: (("time", "y", "x"), obs[:, k].astype(np.float32)) for k, b in enumerate(bands)},
        coords={"time": time, "y": np.arange(obs.shape[2]), "x": np.arange(obs.shape[3])},
    )


def test_a_hazy_neighbour_is_not_the_reference_while_a_clear_date_exists():
    """Fails on the physics prior alone: its harmonisation absorbs the neighbour's haze."""
    truth = _series(n_dates=4, seed=3)
    obs = truth.copy()
    days = [0, 10, 20, 60]
    obs[1] = _haze(obs[1], 0.7)  # the nearest date: hazy over the whole scene
    obs[2] = _haze(obs[2], 0.7)  # and the next one too
    cloud = (slice(8, 30), slice(8, 30))
    obs[0][:, cloud[0], cloud[1]] = 0.85  # the target: thick cloud
    ours = restore(_cube(obs, days), prior="physics+stack")
    physics = restore(_cube(obs, days), prior="physics")
    inner = (slice(12, 26), slice(12, 26))
    # the clear date is 60 days away: it is the reference inside the cloud
    assert np.nanmedian(ours.reference_days.values[0][inner]) == 60
    assert np.nanmedian(physics.reference_days.values[0][inner]) in (10, 20)

    def err(ds):
        est = np.stack([ds[b].values[0][inner] for b in BANDS6])
        return np.sqrt(np.nanmean((est - truth[0][:, inner[0], inner[1]]) ** 2))

    assert err(ours) < 0.5 * err(physics)
    # the hazy dates read as not clear, the target's clear part as clear
    assert (ours.cloud_probability.values[1:3] >= 0.5).mean() >= 0.95
    assert (ours.cloud_probability.values[0][:, 32:] < 0.5).mean() >= 0.95


def _overcast(obs: np.ndarray, t_mean: float, seed: int = 0) -> np.ndarray:
    """A date under grey cloud over the whole scene (t about ``t_mean`` +- 0.05, airlight
    0.65: the darkest of it about 0.45 in every band)."""
    rng = np.random.default_rng(seed)
    t = np.clip(t_mean + 0.05 * smooth_field(rng, obs.shape[-2:], 4), 0.0, 0.4)
    return (obs * t + 0.65 * (1.0 - t)).astype(np.float32)


@pytest.mark.parametrize("prior", ["physics", "physics+stack"])
def test_cloud_on_every_date_is_flagged_not_invented(prior):
    """Failed before the scene's dark-object excess bounded each date's transmission (195 of
    the 256 pixels were filled): a pixel cloudy on both dates takes its own cloud as its
    dark object, so the overcast date read t ~ 0.5 with a high confidence there, served as
    the reference, and the target's thick cloud was filled with cloud and reported valid.
    Four bands, as the real two-date crop: no SWIR to tell cloud from a bright surface."""
    bands = BANDS6[:4]
    truth = _series(n_dates=2, seed=6)[:, :4]
    obs = truth.copy()
    obs[1] = _overcast(obs[1], 0.2)
    cloud = (slice(8, 30), slice(8, 30))
    obs[0][:, cloud[0], cloud[1]] = 0.8 * 0.95 + 0.05 * obs[0][:, cloud[0], cloud[1]]
    out = restore(_cube(obs, [0, 20], bands), prior=prior)
    inner = (slice(11, 27), slice(11, 27))  # away from the prior's windows at the edge
    flagged = out.no_valid_observation.values
    assert flagged[0][inner].all()  # no date shows the surface there
    assert np.isnan(out.B02.values[0][inner]).all()
    # where the target is clear it is kept, and the overcast date is not flagged there
    clear = (slice(0, 40), slice(32, 40))
    np.testing.assert_allclose(out.B02.values[0][clear], obs[0][0][clear], atol=2e-3)
    assert not flagged[1][clear].any()
    if "stack" in prior:  # the evidence also keeps the overcast date out of the gate
        assert np.abs(out.B02.values[1][clear] - truth[1][0][clear]).mean() < 0.005


def test_a_clear_pixel_after_snow_melt_passes_through_unchanged():
    """Failed before the cloud evidence: the melted pixels were dehazed and darkened."""
    truth = _series(n_dates=5, seed=4)
    obs = truth.copy()
    obs[:4, :, :, 20:] = SNOW[None, :, None, None]  # snow on every earlier date
    days = [0, 8, 16, 24, 32]
    ours = restore(_cube(obs, days), prior="physics+stack")
    target = 4
    melted = (slice(2, -2), slice(22, -2))
    got = np.stack([ours[b].values[target][melted] for b in BANDS6])
    np.testing.assert_allclose(got, obs[target][:, melted[0], melted[1]], atol=1e-4)
    assert ours.gate.values[target][melted].min() > 0.99
    # (before the evidence, the restoration moved these pixels by 0.012 on average, up to 0.02)


def test_clear_pixels_of_every_date_pass_through():
    obs = _series(n_dates=6, seed=5)
    out = restore(_cube(obs, np.arange(6) * 10))
    got = np.stack([out[b].values for b in BANDS6], axis=1)
    np.testing.assert_allclose(got, obs, atol=1e-3)
    assert (out.cloud_probability.values < 0.2).mean() > 0.99


def test_forced_reference_takes_the_named_date():
    obs = _series(n_dates=4, seed=6)
    obs[0][:, 10:30, 10:30] = 0.85
    forced = np.full((4,) + obs.shape[2:], -1)
    forced[0] = 2
    out = restore(_cube(obs, [0, 5, 10, 15]), forced_reference=forced)
    assert np.nanmedian(out.reference_days.values[0][12:28, 12:28]) == 10
    with pytest.raises(ValueError, match="forced_reference must be"):
        restore(_cube(obs, [0, 5, 10, 15]), forced_reference=forced[:, :5])


def test_the_correction_is_shrunk_by_its_signal_to_noise():
    cfg = FusionConfig()
    obs = np.full((2, 1, 3), 0.2)
    inverted = np.full((2, 1, 3), 0.1)
    t = np.array([[1.0, 0.97, 0.6]])
    got = _shrink_correction(obs, inverted, t, cfg)
    s = cfg.sigma_t_clear + cfg.sigma_t_haze * (1 - t)
    k = (1 - t) ** 2 / ((1 - t) ** 2 + s**2)
    np.testing.assert_allclose(got, np.broadcast_to(0.2 - k * 0.1, (2, 1, 3)))
    # no haze: the observation; faint haze: part of the correction; clear haze: nearly all
    assert got[0, 0, 0] == 0.2 and 0.1 < got[0, 0, 1] < 0.19 and got[0, 0, 2] < 0.105
    # an unobserved value or an unknown transmission keeps the inversion
    obs[1, 0, 1] = np.nan
    t[0, 2] = np.nan
    got = _shrink_correction(obs, inverted, t, cfg)
    assert got[1, 0, 1] == 0.1 and (got[:, 0, 2] == 0.1).all()


def test_smooth_field_helper_is_what_the_surfaces_use():
    # guards the fixtures: a constant surface would make every expectation above trivial
    surf = make_surface(BANDS6, 20, 20, 0)
    assert surf.std(axis=(1, 2)).min() > 0.001
    assert smooth_field(np.random.default_rng(0), (8, 8), 2).std() == pytest.approx(1.0)


def test_the_darkening_cue_is_specific_to_a_uniform_dimming():
    from pipeline.kernels._inversion import _shadow_specificity

    veg = np.array([0.04, 0.08, 0.05, 0.35, 0.2, 0.1])[:, None, None]
    factor = np.linspace(0.5, 0.3, 6)[:, None, None]  # diffuse light: a little bluer
    assert _shadow_specificity(veg * factor, veg, BANDS6).min() > 0.95  # cloud shadow
    melted = _shadow_specificity(veg, SNOW[:, None, None], BANDS6)  # snow on the reference
    harvested = _shadow_specificity(veg, SOIL[:, None, None], BANDS6)  # soil -> crop
    assert melted.max() < 0.05 and harvested.max() < 0.5
    snow = SNOW[:, None, None].astype(np.float64)
    # snow in a cloud's shadow is still snow: the snowy reference is its yardstick
    assert _shadow_specificity(snow * factor, snow, BANDS6).min() > 0.95
    # melt onto a lake dims the visible alike too, but the target is no longer snow
    assert _shadow_specificity(WATER[:, None, None], snow, BANDS6).max() < 0.05
