"""The VLM prior with tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints built offline.

The checkpoints are real ``save_pretrained`` folders (config, safetensors, image processor,
the real Qwen tokenizer) loaded through the production path; only their sizes are tiny and
their weights random, so the tests check the machinery (shapes, ranges, determinism, the
chunk-independent crop grid, the label -> physics table, once-per-worker loading, the
archive round trip, errors, CLI), not what a real model would judge.
"""

from __future__ import annotations

import json
import os
import pickle

import dask
import numpy as np
import pytest
import xarray as xr
from distributed.diagnostics.plugin import SchedulerPlugin

from pipeline.kernels import wavelengths_of
from pipeline.priors import (
    BlockLocation,
    LabelMapping,
    PriorBlock,
    VLMConfig,
    VLMPrior,
    attach_stored_prior,
    get_prior,
)
from pipeline.priors._vlm_mapping import (
    DEFAULT_LABELS,
    apply_label_mapping,
    interpolate_regions,
    quicklook_rgb,
    region_halo,
    regions_inside,
)
from pipeline.priors._vlm_model import ScorerSpec, get_scorer, load_events, resolve_checkpoint
from pipeline.restore import QUALITY_LAYERS, restore
from tests.tiny_vlm import FAMILIES, build_text_only_model, build_tiny_vlm

BANDS = ("B02", "B03", "B04", "B08")
LAYERS = tuple("prior_p_" + w.replace(" ", "_") for w, _ in DEFAULT_LABELS)
# Small regions so the 96 x 96 px test cube holds a grid of them (6 x 6 regions of 16 px).
TINY = {"region_px": 16, "quicklook_px": 56, "batch_size": 32}
# A short fusion halo, so that the prior's own halo decides how chunks overlap.
FUSION = {"reference_smooth_radius": 1, "harmonise_radius": 4, "temporal_weight": 0.0}
CHUNKS = {"y": 32, "x": 33}  # 3 x 3 chunks, the last column narrower


def _restore(cube, prior):
    return restore(cube, prior=prior, fusion=FUSION)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-vlms")
    return {family: str(build_tiny_vlm(family, root / family)) for family in FAMILIES}


@pytest.fixture(scope="module")
def qwen2(checkpoints):
    return checkpoints["qwen2_vl"]


@pytest.fixture(scope="module")
def cube():
    """Two dates of the synthetic L2A stack (clouds, haze, shadow, SCL), 96 x 96 px."""
    from pipeline.synthetic import make_stack

    return make_stack(shape=(2, 96, 96), seed=1).observed[[*BANDS, "SCL"]].load()


@pytest.fixture(scope="module")
def eager(cube, qwen2):
    return _restore(cube, VLMPrior(model=qwen2, **TINY))


# ----------------------------------------------------------------------------- the model path


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_and_scores_label_probabilities(checkpoints, cube, family):
    prior = VLMPrior(model=checkpoints[family], **TINY)
    data = np.stack([cube[b].values for b in BANDS], axis=1)[:1, :, :48, :40]  # (T, B, Y, X)
    location = BlockLocation((0, 0), data.shape[2:])
    probs, has_data, spans = prior.region_probabilities(data, BANDS, location)
    assert spans == ((0, 3), (0, 3))  # 48 x 40 px: 3 x 3 regions of 16 px, the last cut at 40
    assert probs.shape == (1, len(LAYERS), 3, 3) and has_data.all()
    assert np.all((probs >= 0) & (probs <= 1))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    scorer = get_scorer(prior.config.scorer_spec())
    assert scorer.model_type == family and str(scorer.device) == "cpu"
    assert str(scorer.dtype) == "torch.float32"  # CPU: full precision
    again, _, _ = prior.region_probabilities(data, BANDS, location)
    np.testing.assert_array_equal(again, probs)  # deterministic
    # Different crops get different judgements (the image reaches the model).
    assert np.ptp(probs[:, 0]) > 0


# Labels whose answers share first tokens ('thin' for two, 'cloud' for two, one a prefix of the
# other) and differ in length (2 to 4 tokens with the end of turn): a first-token scorer
# cannot tell them apart. The tests check the collisions with the real tokenizer.
COLLIDING = ("clear", "thin haze", "thin cloud", "cloud", "cloud shadow", "thick cloud")


def _crops(cube, n=3):
    """``n`` different quicklook crops of the test cube, resized as the prior does."""
    from pipeline.priors._vlm import _resize

    data = np.stack([cube[b].values for b in BANDS], axis=1)[:1]
    rgb = quicklook_rgb(data, BANDS)
    corners = [(0, 0), (16, 16), (32, 0), (48, 32), (64, 64)][:n]
    return [_resize(rgb[0, y : y + 16, x : x + 16], 56) for y, x in corners]


def _colliding_scorer(model):
    return get_scorer(ScorerSpec(model, COLLIDING, "Which one: " + ", ".join(COLLIDING) + "?"))


def test_labels_sharing_first_tokens_get_their_own_probabilities(qwen2, cube):
    scorer = _colliding_scorer(qwen2)
    tok = scorer.tokenizer
    first = {w: tok(w, add_special_tokens=False)["input_ids"][0] for w in COLLIDING}
    assert first["thin haze"] == first["thin cloud"]  # both start with the token 'thin'
    assert first["cloud"] == first["cloud shadow"]  # and 'cloud' is a prefix of the other
    lengths = {len(tok(w, add_special_tokens=False)["input_ids"]) for w in COLLIDING}
    assert lengths == {1, 2, 3}
    probs = scorer.score(_crops(cube), batch_size=3)
    assert probs.shape == (3, len(COLLIDING)) and np.all(probs > 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    k = {w: i for i, w in enumerate(COLLIDING)}
    for a, b in (("thin haze", "thin cloud"), ("cloud", "cloud shadow")):
        ratio = probs[:, k[a]] / probs[:, k[b]]
        assert np.all(np.abs(np.log(ratio)) > 1e-3), (a, b, probs)  # told apart per crop
    assert scorer.forward_passes == 2 * scorer.batches_scored  # image + prompt, then answers


@pytest.mark.parametrize("family", FAMILIES)
def test_label_scores_equal_a_plain_forward_on_each_whole_answer(checkpoints, cube, family):
    """The batched, cached scorer against the model run on prompt + answer, one label at a
    time, the model computing its own M-RoPE positions, log-probabilities summed by hand."""
    import torch

    scorer = _colliding_scorer(checkpoints[family])
    crop = _crops(cube, 1)
    feats = scorer.image_processor(images=crop, return_tensors="pt")
    grid = feats["image_grid_thw"]
    prompt = scorer._prompt_ids(int(grid[0].prod()) // scorer.merge_size**2)
    end = scorer.tokenizer.convert_tokens_to_ids("<|im_end|>")
    totals = []
    for word in COLLIDING:
        answer = scorer.tokenizer(word, add_special_tokens=False)["input_ids"] + [end]
        ids = torch.tensor([prompt + answer])
        with torch.inference_mode():
            logits = scorer.model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                mm_token_type_ids=(ids == scorer.image_token_id).long(),
                pixel_values=feats["pixel_values"],
                image_grid_thw=grid,
            ).logits[0]
        # the token at position P + k (P prompt tokens) is predicted by the logits at P + k - 1
        reading = logits[len(prompt) - 1 : len(prompt) - 1 + len(answer)]
        log_probs = torch.log_softmax(reading.double(), dim=-1)
        totals.append(sum(float(log_probs[k, t]) for k, t in enumerate(answer)))
    expected = np.exp(np.array(totals) - np.logaddexp.reduce(totals))
    np.testing.assert_allclose(scorer.score(crop, batch_size=1)[0], expected, atol=1e-4)
    # with three crops in the batch (so the cache is shared by more rows) the first still agrees
    np.testing.assert_allclose(scorer.score(_crops(cube), batch_size=3)[0], expected, atol=1e-4)


def test_scores_do_not_depend_on_the_batch(qwen2, cube):
    scorer = _colliding_scorer(qwen2)
    images = _crops(cube, 5)
    together = scorer.score(images, batch_size=3)  # batches of 3 and 2
    one_by_one = np.concatenate([scorer.score([im], batch_size=1) for im in images])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert np.ptp(together[:, 0]) > 0  # different crops, different judgements


def test_restore_with_the_vlm_prior_outputs_and_ranges(eager, cube):
    for name in (*BANDS, *QUALITY_LAYERS, *LAYERS):
        assert name in eager, name
        assert eager[name].dims == ("time", "y", "x")
    probs = np.stack([eager[n].values for n in LAYERS])
    assert np.all((probs >= 0) & (probs <= 1))
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    for name in ("confidence", "gate", "transmission"):
        v = eager[name].values
        assert np.nanmin(v) >= 0 and np.nanmax(v) <= 1, name
    assert eager.attrs["prior"] == "vlm"
    params = json.loads(eager.attrs["prior_params"])
    assert params["region_px"] == 16 and params["labels"][2] == ["thick cloud", "thick"]
    assert eager["prior_p_thin_cloud"].attrs["long_name"].startswith("VLM probability")


def test_per_pixel_maps_are_smooth_not_blocky(eager, cube, qwen2):
    """Bilinear between region centres: a pixel step is at most 1/16 of a region step."""
    prior = VLMPrior(model=qwen2, **TINY)
    data = np.stack([cube[b].values for b in BANDS], axis=1)
    probs, _, _ = prior.region_probabilities(data, BANDS, BlockLocation((0, 0), data.shape[2:]))
    for k, name in enumerate(LAYERS):
        per_pixel = eager[name].values.astype(np.float64)
        region = probs[:, k].astype(np.float64)
        for axis in (1, 2):
            region_step = np.abs(np.diff(region, axis=axis)).max()
            pixel_step = np.abs(np.diff(per_pixel, axis=axis)).max()
            # nearest-region (blocky) maps would jump by the full region step
            assert 0 < pixel_step <= region_step / 16 + 1e-6, (name, axis)


def test_dask_equals_in_memory_on_odd_chunks(eager, cube, qwen2):
    prior = VLMPrior(model=qwen2, **TINY)
    lazy = _restore(cube.chunk(CHUNKS), prior)
    assert lazy["B02"].data.numblocks[1:] == (3, 3)
    assert (
        lazy["prior_p_clear"].data.name
        == _restore(cube.chunk(CHUNKS), prior)["prior_p_clear"].data.name
    )
    with dask.config.set(scheduler="synchronous"):
        computed = lazy.compute()
    for name in (*BANDS, *QUALITY_LAYERS, *LAYERS):
        np.testing.assert_allclose(
            computed[name].values.astype(np.float64),
            eager[name].values.astype(np.float64),
            atol=1e-5,
            equal_nan=True,
            err_msg=name,
        )


def test_the_prior_in_the_graph_is_small_and_holds_no_model(qwen2):
    prior = VLMPrior(model=qwen2, **TINY)
    get_scorer(prior.config.scorer_spec())  # loaded in this process ...
    blob = pickle.dumps(prior)
    assert len(blob) < 10_000  # ... but the prior carries only its config
    assert b"torch" not in blob


# ----------------------------------------------------------------------------- crop grid


@pytest.mark.parametrize(
    ("origin", "size", "total", "expected"),
    [
        (0, 44, 44, (0, 4)),  # whole axis: the truncated last region belongs to it
        (0, 30, 44, (0, 2)),  # regions 0, 1 complete; 2 would end at 36 > 30
        (5, 30, 44, (1, 2)),  # region 0 starts before the block
        (20, 24, 44, (2, 4)),  # reaches the end: region 3 (36..44) is complete
        (13, 10, 44, (2, 2)),  # no complete region
    ],
)
def test_regions_inside_a_block(origin, size, total, expected):
    assert regions_inside(origin, size, total, 12) == expected


def test_interpolation_is_chunk_independent_and_exact_at_centres():
    rng = np.random.default_rng(1)
    total, s = (50, 61), 9
    regions = (-(-total[0] // s), -(-total[1] // s))
    values = rng.random((2, 3) + regions).astype(np.float32)
    has = rng.random((2,) + regions) > 0.15
    full_span = ((0, regions[0]), (0, regions[1]))
    whole = interpolate_regions(values, has, (0, 0), total, total, full_span, s)
    # Exact at a region centre whose 4 neighbours all have values.
    i, j = (
        np.argwhere(has[0, 1:-1, 1:-1] & has[0, 2:, 1:-1] & has[0, 1:-1, 2:] & has[0, 2:, 2:])[0]
        + 1
    )
    cy, cx = i * s + (s - 1) // 2, j * s + (s - 1) // 2  # s odd: centres fall on pixels
    np.testing.assert_allclose(whole[0, :, cy, cx], values[0, :, i, j], rtol=1e-6)
    halo = region_halo(s)
    for y0, y1, x0, x1 in [(0, 17, 0, 23), (17, 50, 23, 61), (9, 40, 30, 47)]:
        py0, py1 = max(0, y0 - halo), min(total[0], y1 + halo)
        px0, px1 = max(0, x0 - halo), min(total[1], x1 + halo)
        spans = (
            regions_inside(py0, py1 - py0, total[0], s),
            regions_inside(px0, px1 - px0, total[1], s),
        )
        sub = values[:, :, spans[0][0] : spans[0][1], spans[1][0] : spans[1][1]]
        sub_has = has[:, spans[0][0] : spans[0][1], spans[1][0] : spans[1][1]]
        part = interpolate_regions(
            sub, sub_has, (py0, px0), (py1 - py0, px1 - px0), total, spans, s
        )
        np.testing.assert_allclose(
            part[:, :, y0 - py0 : y1 - py0, x0 - px0 : x1 - px0],
            whole[:, :, y0:y1, x0:x1],
            rtol=1e-6,
            equal_nan=True,
        )


def test_quicklook_stretch_and_nodata():
    data = np.full((1, 3, 2, 2), np.nan, np.float32)
    data[0, :, 0, 0] = 0.3  # stretch_max: white
    data[0, :, 0, 1] = 0.6  # brighter than the stretch: saturates
    data[0, :, 1, 0] = 0.0
    rgb = quicklook_rgb(data, ("B02", "B03", "B04"))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 2, 2, 3)
    assert rgb[0, 0, 0].tolist() == [255] * 3 and rgb[0, 0, 1].tolist() == [255] * 3
    assert rgb[0, 1, 0].tolist() == [0] * 3 and rgb[0, 1, 1].tolist() == [0] * 3  # NaN: black
    with pytest.raises(ValueError, match="B04"):
        quicklook_rgb(data, ("B02", "B03", "B08"))


# ----------------------------------------------------------------------------- mapping


def _physics_block(t=0.5, c=0.5, shape=(1, 4, 3, 3)):
    T, B, Y, X = shape
    return PriorBlock(
        np.full((T, Y, X), t, np.float32),
        np.full((T, B, Y, X), t, np.float32),
        np.full((T, Y, X), c, np.float32),
        np.zeros((T, B, Y, X), np.float32),
    )


def _map(role_index, mapping=None, gamma=1.5, data=None):
    mapping = mapping or LabelMapping()
    bands = ("B02", "B03", "B04", "B08")
    data = np.full((1, 4, 3, 3), 0.2, np.float32) if data is None else data
    probs = np.zeros((1, 5, 3, 3), np.float32)
    if role_index is None:
        probs[:] = np.nan
    else:
        probs[:, role_index] = 1.0
    airlight = np.full((1, 4), 0.8, np.float32)
    roles = tuple(r for _, r in DEFAULT_LABELS)
    return (
        apply_label_mapping(
            data,
            airlight,
            np.array([gamma]),
            wavelengths_of(bands),
            _physics_block(),
            probs,
            roles,
            mapping,
            0.1,
        ),
        data,
        airlight,
        bands,
    )


def test_mapping_thin_cloud_trusts_the_physical_inversion():
    # A hazy observation (0.5 under airlight 0.8): t_b >= 0.5 stays above the floor 1 - I/A.
    out, data, a, bands = _map(1, data=np.full((1, 4, 3, 3), 0.5, np.float32))
    np.testing.assert_allclose(out.transmission, 0.5)
    np.testing.assert_allclose(out.confidence, 0.5)
    # Haze gamma (scene value 1.5): t_b = 0.5 ** ((490 / lambda_b) ** 1.5), rising with lambda.
    expected_tb = 0.5 ** ((490.0 / np.array([490.0, 560.0, 665.0, 842.0])) ** 1.5)
    np.testing.assert_allclose(out.band_transmission[0, :, 1, 1], expected_tb, rtol=1e-5)
    expected_j = (0.5 - 0.8 * (1 - expected_tb)) / expected_tb
    np.testing.assert_allclose(out.surface[0, :, 1, 1], expected_j, rtol=1e-4)


def test_mapping_thick_cloud_hands_over_to_the_reference():
    # Bright as thick cloud is (0.75 under airlight 0.8): the floor 1 - I/A is below 0.1.
    out, *_ = _map(2, data=np.full((1, 4, 3, 3), 0.75, np.float32))
    np.testing.assert_allclose(out.transmission, 0.1)  # thick_transmission ceiling
    np.testing.assert_allclose(out.confidence, 0.05)  # thick_confidence ceiling
    # Grey cloud (thick_gamma 0): every band has the same transmission.
    np.testing.assert_allclose(out.band_transmission[0, :, 0, 0], 0.1, rtol=1e-6)


def test_mapping_bright_surface_is_not_dehazed_and_trusted():
    out, data, *_ = _map(4)
    np.testing.assert_allclose(out.transmission, 1.0)
    np.testing.assert_allclose(out.confidence, 0.95)
    np.testing.assert_allclose(out.surface, data)  # J = I: the observed value is kept


def test_mapping_shadow_is_not_dehazed_and_left_to_the_reference():
    out, data, *_ = _map(3)
    np.testing.assert_allclose(out.transmission, 1.0)
    np.testing.assert_allclose(out.confidence, 0.3)  # shadow_confidence ceiling
    np.testing.assert_allclose(out.surface, data)


def test_mapping_clear_raises_confidence_keeps_physics_transmission():
    out, *_ = _map(0)
    np.testing.assert_allclose(out.transmission, 0.5)
    np.testing.assert_allclose(out.confidence, 0.9)


def test_mapping_weight_zero_or_no_judgement_is_the_physics_prior():
    for out in (_map(2, LabelMapping(vlm_weight=0.0))[0], _map(None)[0]):
        np.testing.assert_allclose(out.transmission, 0.5)
        np.testing.assert_allclose(out.confidence, 0.5)


def test_mapping_keeps_zero_confidence_without_observation():
    data = np.full((1, 4, 3, 3), 0.2, np.float32)
    data[0, :, 1, 1] = np.nan
    out, *_ = _map(4, data=data)
    assert out.confidence[0, 1, 1] == 0.0 and out.confidence[0, 0, 0] == pytest.approx(0.95)


def test_thick_cloud_judgement_on_a_dark_pixel_never_inverts_to_negative_reflectance():
    """Stored thick-cloud layers (no model) over a block with one dark pixel: the judgement's
    grey t_b = 0.1 would invert to J = (0.01 - 0.8 * 0.9) / 0.1 < 0 there; the VLM path floors
    t_b at 1 - I/A as the physics prior does, so J stays >= 0 while t and c keep the judgement."""
    from pipeline.kernels import invert
    from pipeline.priors import SceneParams

    prior = VLMPrior(model="/no/model/needed", **TINY)  # the stored layers replace the model
    rng = np.random.default_rng(3)
    data = rng.uniform(0.3, 0.7, (1, 4, 20, 20)).astype(np.float32)  # cloud-bright block
    data[0, :, 7, 11] = 0.01  # a dark pixel (water) the judgement covers too
    bands = ("B02", "B03", "B04", "B08")
    nan = np.array([np.nan])
    airlight = np.full((1, 4), 0.8)
    scene = SceneParams(bands, airlight, np.array([1.0]), np.full(4, 0.01), nan, nan)
    stored = np.zeros((1, len(LAYERS), 20, 20), np.float32)
    stored[:, LAYERS.index("prior_p_thick_cloud")] = 1.0
    location = BlockLocation((0, 0), (20, 20), stored=stored)
    out, probs = prior.block_at(data, bands, scene, None, location)
    np.testing.assert_array_equal(probs, stored)
    # The judgement itself: t_ref at most the thick-cloud ceiling, confidence at most its own.
    assert out.transmission[0, 7, 11] <= 0.1 and out.confidence[0, 7, 11] <= 0.05
    # Without the floor (the grey judgement t_b = t_ref in every band) J would be negative:
    unfloored = np.broadcast_to(out.transmission[:, None], data.shape)
    assert np.all(invert(data, airlight, unfloored, 0.1)[0, :, 7, 11] < -1.0)
    # With it the surface is non-negative everywhere, and t_b meets the floor 1 - I/A.
    # (at the floor J is 0 up to the float32 rounding of t_b, some 1e-8)
    assert np.all(out.surface >= -1e-6), out.surface.min()
    assert out.surface[0, :, 7, 11].min() > -1e-6
    floor = 1 - data / 0.8
    assert np.all(out.band_transmission >= floor - 1e-6)
    np.testing.assert_allclose(out.band_transmission[0, :, 7, 11], 1 - 0.01 / 0.8, rtol=1e-6)


def test_label_mapping_rejects_out_of_range():
    with pytest.raises(ValueError, match="thick_confidence"):
        LabelMapping(thick_confidence=1.5)


# ----------------------------------------------------------------------------- config, errors


def test_get_prior_routes_flat_keywords(qwen2):
    prior = get_prior("vlm", model=qwen2, region_px=64, vlm_weight=0.5, t_min=0.15)
    assert isinstance(prior, VLMPrior)
    assert prior.config.region_px == 64 and prior.config.mapping.vlm_weight == 0.5
    assert prior.config.physics.t_min == 0.15
    assert prior.halo == region_halo(64) == 97
    with pytest.raises(TypeError, match="unknown VLM prior option"):
        get_prior("vlm", model=qwen2, regionpx=64)
    with pytest.raises(ValueError, match="--vlm-model"):
        get_prior("vlm")
    with pytest.raises(ValueError, match="role"):
        VLMConfig(model=qwen2, labels=(("clear", "clear"), ("fog", "mist")))


def test_a_label_without_tokens_is_a_clear_error(qwen2):
    with pytest.raises(ValueError, match="label '' encodes to no token.*fix"):
        get_scorer(ScorerSpec(qwen2, ("clear", ""), "?"))


def test_missing_checkpoint_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_checkpoint(str(tmp_path / "empty"))
    assert resolve_checkpoint("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    folder = build_text_only_model(tmp_path / "qwen2-text")
    spec = VLMConfig(model=str(folder)).scorer_spec()
    with pytest.raises(ValueError, match="'qwen2' model.*Qwen vision-language"):
        get_scorer(spec)


def test_hub_id_without_internet_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    spec = ScorerSpec("Qwen/Qwen2.5-VL-3B-Instruct", ("clear", "shadow"), "?")
    with pytest.raises(OSError, match="hf download"):
        get_scorer(spec)


def test_missing_true_colour_bands_is_a_clear_error(qwen2, cube):
    with pytest.raises(ValueError, match="B04"):
        _restore(cube[["B02", "B03", "B08"]], VLMPrior(model=qwen2, **TINY))


# ----------------------------------------------------------------------------- stored prior


def test_archive_round_trip_and_rerun_reuses_the_stored_prior(eager, cube, qwen2, tmp_path):
    from pipeline.archive import ArchiveConfig, open_archive, write_archive

    store = str(tmp_path / "vlm.zarr")
    write_archive(eager, store, ArchiveConfig(chunk_size=32), progress=False)
    back = open_archive(store)
    for name in LAYERS:
        np.testing.assert_array_equal(back[name].values, eager[name].values)
    # A rerun with the stored layers never touches a model: point it at one that is not there.
    loads = len(load_events())
    reuse = VLMPrior(model=str(tmp_path / "no-model-here"), **TINY)
    with_stored = attach_stored_prior(cube, store, reuse)
    again = _restore(with_stored.chunk(CHUNKS), reuse).compute(scheduler="sync")
    assert len(load_events()) == loads
    for name in (*BANDS, *QUALITY_LAYERS, *LAYERS):
        np.testing.assert_allclose(
            again[name].values, eager[name].values, atol=1e-5, equal_nan=True
        )
    with pytest.raises(ValueError, match="'time' coordinate"):
        attach_stored_prior(cube.isel(time=slice(0, 1)), store, reuse)
    with pytest.raises(ValueError, match="no stored"):
        attach_stored_prior(cube, back.drop_vars(list(LAYERS)), reuse)


def test_label_png(eager, tmp_path):
    from pipeline.quicklook import save_prior_labels

    png = save_prior_labels(eager, tmp_path / "labels.png", time_index=1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(ValueError, match="--prior vlm"):
        save_prior_labels(eager.drop_vars(list(LAYERS)), tmp_path / "x.png")


# ----------------------------------------------------------------------------- on a cluster


def _worker_state():
    from pipeline.priors._vlm_model import _CACHE, load_events

    return {
        "pid": os.getpid(),
        "loads": len(load_events()),
        "batches": sum(s.batches_scored for s in _CACHE.values()),
    }


class _RestrictionLog(SchedulerPlugin):
    """Scheduler plugin: the resource restrictions of every task sent to a worker."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.seen: list[tuple[str, dict]] = []

    def transition(self, key, start, finish, *args, **kwargs):
        ts = self.scheduler.tasks.get(key)
        if finish == "processing" and ts is not None and ts.resource_restrictions:
            self.seen.append((str(key), dict(ts.resource_restrictions)))


@pytest.mark.slow
def test_two_worker_processes_load_the_model_once_each(eager, cube, qwen2):
    from distributed import Client, LocalCluster

    prior = VLMPrior(model=qwen2, gpu_resource=1, **TINY)
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            resources={"GPU": 1},
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        log = _RestrictionLog(cluster.scheduler)
        cluster.scheduler.add_plugin(log, name="restriction-log")
        # restore turns dask's low-level fusion off (it drops annotations); the context
        # puts the setting back for the other tests of this process.
        with dask.config.set({"optimization.fuse.active": None}):
            result = _restore(cube.chunk(CHUNKS), prior).compute()  # 9 chunks
        states = client.run(_worker_state)
    # The block tasks asked Dask for the GPU resource (and only they did).
    assert len(log.seen) == 9 and all(r == {"GPU": 1} for _, r in log.seen), log.seen
    assert len({s["pid"] for s in states.values()}) == 2
    for state in states.values():
        assert state["batches"] > 0, states  # both workers scored crops ...
        assert state["loads"] == 1, states  # ... with one load each
    assert sum(s["batches"] for s in states.values()) >= 9  # one block task per chunk
    for name in (*BANDS, "confidence", *LAYERS):
        np.testing.assert_allclose(
            result[name].values, eager[name].values, atol=1e-5, equal_nan=True
        )


# ----------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_benchmark_prior_end_to_end(capsys, tmp_path):
    from flows.cli import EXIT_OK, main

    args = [
        "benchmark",
        "prior",
        "--crops",
        "4",
        "--repeats",
        "1",
        "--region-px",
        "32",
        "--quicklook-px",
        "56",
        "--area-km2",
        "100",
        "--dates",
        "10",
        "--gpu-crops-per-s",
        "50",
        "--output",
        str(tmp_path),
    ]
    assert main(args) == EXIT_OK
    out = capsys.readouterr().out
    assert "crops/s" in out and "GPU-hours" in out and "tiny random" in out
    report = json.loads((tmp_path / "prior_cost.json").read_text())
    assert report["crops_timed"] == 4 and report["crops_per_s"] > 0
    # 100 km2 at 10 m = 1e6 px = 976.6 regions of 32 px per date, times the halo overhead.
    expected_crops = 1e6 / 32**2 * report["halo_overhead"] * 10
    assert report["gpu_hours"] == pytest.approx(expected_crops / 50 / 3600, rel=1e-6)
    assert report["gpu_throughput_source"].startswith("assumed")


def test_cli_prior_flags_are_checked(capsys, tmp_path):
    from flows.cli import EXIT_USAGE, main

    base = ["demo", "--output", str(tmp_path), "--size", "64", "--dates", "3"]
    assert main([*base, "--prior", "vlm"]) == EXIT_USAGE
    assert "--vlm-model" in capsys.readouterr().err
    assert main([*base, "--vlm-model", "x"]) == EXIT_USAGE
    assert "need --prior vlm" in capsys.readouterr().err
    run = [
        "run",
        "--bbox",
        "13.1,48.27,13.18,48.31",
        "--datetime",
        "2021-06-01/2021-10-01",
        "--catalog",
        str(tmp_path),
        "--output",
        str(tmp_path / "o.zarr"),
        "--prior",
        "vlm",
    ]
    assert main(run) == EXIT_USAGE
    assert "--vlm-model" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_with_the_vlm_prior(capsys, tmp_path, qwen2):
    from flows.cli import EXIT_OK, main

    out_dir = tmp_path / "demo"
    args = [
        "-q",
        "demo",
        "--output",
        str(out_dir),
        "--size",
        "64",
        "--dates",
        "3",
        "--workers",
        "1",
        "--prior",
        "vlm",
        "--vlm-model",
        qwen2,
        "--vlm-region-px",
        "16",
        "--vlm-batch-size",
        "4",
    ]
    assert main(args) == EXIT_OK
    assert "VLM labels" in capsys.readouterr().out
    ds = xr.open_zarr(out_dir / "restored.zarr", decode_coords="all")
    assert ds.attrs["prior"] == "vlm"
    assert json.loads(ds.attrs["prior_params"])["region_px"] == 16
    for name in LAYERS:
        assert name in ds
    probs = np.stack([ds[n].values for n in LAYERS])
    np.testing.assert_allclose(np.nansum(probs, axis=0)[np.isfinite(probs[0])], 1.0, atol=1e-5)
    assert (out_dir / "prior_labels.png").stat().st_size > 5000


def test_run_flags_reach_the_run_config(monkeypatch, tmp_path):
    """``run --prior vlm --vlm-*`` builds the RunConfig the flow gets (the flow itself runs in
    the demo test above and in tests/test_cli.py)."""
    import flows.run
    from flows.cli import EXIT_OK, main
    from flows.run import RunSummary

    seen = {}

    def capture(config, **kw):
        seen["config"] = config
        return RunSummary(str(tmp_path), 0, 0, (0, 0), 0, 0, [], 0, 0.0)

    monkeypatch.setattr(flows.run, "run", capture)
    args = [
        "-q",
        "run",
        "--bbox",
        "13.1,48.27,13.18,48.31",
        "--datetime",
        "2021-06-01/2021-10-01",
        "--catalog",
        str(tmp_path),
        "--output",
        str(tmp_path / "o.zarr"),
        "--prior",
        "vlm",
        "--vlm-model",
        "/models/qwen",
        "--vlm-region-px",
        "128",
        "--vlm-batch-size",
        "8",
        "--vlm-gpu",
        "1",
    ]
    assert main(args) == EXIT_OK
    config = seen["config"]
    assert config.prior == "vlm"
    assert dict(config.prior_options) == {
        "model": "/models/qwen",
        "region_px": 128,
        "batch_size": 8,
        "gpu_resource": 1.0,
    }
    prior = get_prior(config.prior, **config.prior_options)  # what restore_step builds
    assert prior.resources == {"GPU": 1.0} and prior.config.region_px == 128
