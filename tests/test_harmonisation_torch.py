"""The torch twin of the local harmonisation (``_harmonisation_torch``) against the numba passes.

Tolerances: both compute every moment, the fit and the residual in float64 and return
float32. The torch window sums are differences of cumulative sums and its cell sums are
tensor reductions, where numba adds pixel by pixel, so the float64 moments may differ in
their last bits. Gains and offsets must agree to 1e-6 relative (float32 carries 6e-8); the
residual, a difference of moments (sum w y^2 - ...), to 1e-5 relative with 1e-9 absolute;
the pre-weight to 1e-12. NaN patterns must be identical. (On this machine the float32
outputs were bit-identical on every case below; the tolerances leave room for other
torch builds and devices.)

Only the CPU is exercised here (no GPU where this was written); the CUDA test runs where
torch sees a device.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is not installed (the 'vlm' extra): the torch backend is untestable"
)

from pipeline.kernels import FusionConfig  # noqa: E402
from pipeline.kernels._harmonisation import _agreement, coarse_reach, harmonise_local  # noqa: E402
from pipeline.kernels._harmonisation_torch import (  # noqa: E402
    agreement_torch,
    harmonise_local_torch,
    import_torch,
    resolve_device,
)

GAIN_RTOL = 1e-6
RESID_RTOL, RESID_ATOL = 1e-5, 1e-9
AGREEMENT_ATOL = 1e-12


def assert_close(want, got, rtol, atol=0.0):
    want, got = np.asarray(want), np.asarray(got)
    assert want.shape == got.shape and want.dtype == got.dtype
    np.testing.assert_array_equal(np.isnan(want), np.isnan(got), err_msg="NaN patterns differ")
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


def assert_same_fit(want, got):
    assert len(want) == len(got)
    for a, b in zip(want[:2], got[:2], strict=True):
        assert_close(a, b, GAIN_RTOL)
    if len(want) == 3:
        assert_close(want[2], got[2], RESID_RTOL, RESID_ATOL)


def random_pair(seed, shape=(4, 70, 90), dtype=np.float32):
    """A source/target pair related by a noisy affine map, with NaN, +-inf, a NaN block,
    a pixel invalid in one band only, and a zero-weight region wider than a window."""
    rng = np.random.default_rng(seed)
    nb, ny, nx = shape
    s = rng.uniform(0.0, 0.5, shape)
    t = 1.1 * s + 0.02 + rng.normal(0, 0.01, shape)
    t[:, 5:9, 7:12] = np.nan
    s[rng.random(shape) < 0.01] = np.nan
    s[1, 30, 30] = np.inf
    t[2, 31, 40] = -np.inf
    w = rng.uniform(0, 1, (ny, nx)) * (rng.random((ny, nx)) < 0.8)
    w[40:, 60:] = 0.0  # more than a window of nothing: the prior there
    prior = (np.linspace(0.9, 1.1, nb), np.linspace(-0.01, 0.01, nb))
    return t.astype(dtype), s.astype(dtype), w, prior


FITS = [  # (radius, grid_step, origin)
    (0, 1, (0, 0)),
    (3, 1, (0, 0)),
    (32, 1, (0, 0)),  # the window wider than the array
    (3, 2, (0, 0)),
    (12, 3, (37, 5)),  # cells not aligned to the block
    (32, 8, (0, 0)),  # the default (grid_step = radius // 4)
    (32, 8, (13, 250)),
]


@pytest.mark.parametrize(("radius", "step", "origin"), FITS)
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_fit_equals_numba_on_random_inputs(radius, step, origin, residual, dtype):
    t, s, w, (pg, po) = random_pair(1, dtype=dtype)
    kw = {"ridge": 4e-3, "shrink_pixels": 100.0, "residual": residual}
    kw |= {"grid_step": step, "origin": origin}
    want = harmonise_local(t, s, w, radius, pg, po, **kw)
    got = harmonise_local_torch(t, s, w, radius, pg, po, device="cpu", **kw)
    assert len(got) == (3 if residual else 2)
    assert_same_fit(want, got)
    # the zero-weight region holds the prior map, its residual is unknown
    corner = (slice(None), slice(60, None), slice(80, None))
    if step == 1 and radius < 20:
        np.testing.assert_array_equal(
            got[0][corner], np.broadcast_to(pg[:, None, None], (4, 10, 10)).astype(np.float32)
        )
        if residual:
            assert np.isnan(got[2][corner[1:]]).all()


@pytest.mark.parametrize("step", [1, 8])
def test_torch_fit_equals_numba_on_a_smooth_field(step):
    """Structured input: a gain and offset varying across the array, every pixel clear."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:200, 0:230]
    s = rng.uniform(0.05, 0.4, (3, 200, 230))
    gain = 1 + 0.2 * np.sin(yy / 60)
    t = gain[None] * s + 0.02 * np.cos(xx / 50)[None] + rng.normal(0, 0.005, s.shape)
    w = (rng.random((200, 230)) > 0.3).astype(float)
    args = (32, np.ones(3), np.zeros(3))
    want = harmonise_local(t, s, w, *args, residual=True, grid_step=step)
    got = harmonise_local_torch(t, s, w, *args, residual=True, grid_step=step, device="cpu")
    assert_same_fit(want, got)
    # and it follows the field (the fit is not trivially the prior)
    assert np.abs(got[0][:, 100] - gain[100]).max() < 0.05


def test_no_weight_anywhere_gives_the_prior_and_no_residual():
    t, s, _, (pg, po) = random_pair(2)
    w = np.zeros(t.shape[1:])
    for step in (1, 4):
        want = harmonise_local(t, s, w, 5, pg, po, residual=True, grid_step=step)
        got = harmonise_local_torch(t, s, w, 5, pg, po, residual=True, grid_step=step)
        assert_same_fit(want, got)
        np.testing.assert_array_equal(
            got[1], np.broadcast_to(po[:, None, None], t.shape).astype(np.float32)
        )
        assert np.isnan(got[2]).all()


@pytest.mark.parametrize(("radius", "step"), [(8, 1), (32, 8), (12, 3)])
def test_a_block_with_halo_gives_the_whole_arrays_core(radius, step):
    """The torch backend is chunking-invariant as the numba one: with the halo the fit reads
    (the radius, or ``coarse_reach`` on a coarse grid) the block's core equals the whole
    array's. The coarse window adds the same cells in the same order, the exact path's
    cumulative sums start at another pixel: equal to float32 rounding."""
    t, s, w, (pg, po) = random_pair(3, shape=(3, 160, 170))
    whole = harmonise_local_torch(t, s, w, radius, pg, po, residual=True, grid_step=step)
    h = radius if step == 1 else coarse_reach(radius, step)
    oy, ox, ny, nx = 21, 34, 2 * h + 30, 2 * h + 25
    block = (slice(oy, oy + ny), slice(ox, ox + nx))
    part = harmonise_local_torch(
        t[:, block[0], block[1]],
        s[:, block[0], block[1]],
        w[block],
        radius,
        pg,
        po,
        residual=True,
        grid_step=step,
        origin=(oy, ox),
    )
    core = (slice(h, ny - h), slice(h, nx - h))
    for a, b in zip(whole[:2], part[:2], strict=True):
        assert_close(
            a[:, block[0], block[1]][(slice(None), *core)], b[(slice(None), *core)], GAIN_RTOL
        )
    assert_close(whole[2][block][core], part[2][core], RESID_RTOL, RESID_ATOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_agreement_equals_numba(dtype):
    t, s, _, (pg, po) = random_pair(4, dtype=dtype)
    t[:, 50:55, 10:20] *= 0.6  # the target darker than the mapped source: the shadow ramp
    s[:, 0, :] = np.nan  # nothing valid in a row
    for scale, dark in ((0.1, (0.5, 0.85)), (0.02, (0.7, 0.7))):
        want = _agreement(t, s, pg, po, scale=scale, darkening=dark)
        got = agreement_torch(t, s, pg, po, scale=scale, darkening=dark, device="cpu")
        assert got.dtype == np.float64 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=AGREEMENT_ATOL)
        assert (got[0] == 0).all() and 0 < got.max() <= 1


def test_tensors_in_and_out():
    t, s, w, (pg, po) = random_pair(6)
    got = harmonise_local_torch(
        torch.from_numpy(t),
        torch.from_numpy(s),
        torch.from_numpy(w),
        6,
        torch.from_numpy(pg),
        po,
        residual=True,
        grid_step=2,
        as_tensors=True,
        device="cpu",
    )
    assert all(isinstance(a, torch.Tensor) and a.dtype == torch.float32 for a in got)
    want = harmonise_local(t, s, w, 6, pg, po, residual=True, grid_step=2)
    assert_same_fit(want, tuple(a.numpy() for a in got))


def test_bad_input_is_refused_with_the_numba_messages():
    t, s, w, (pg, po) = random_pair(7)
    with pytest.raises(ValueError, match=r"target and source \(B, Y, X\) and weight \(Y, X\)"):
        harmonise_local_torch(t, s[:, :-1], w, 3, pg, po)
    with pytest.raises(ValueError, match="grid_step must be >= 1"):
        harmonise_local_torch(t, s, w, 3, pg, po, grid_step=0)


def test_devices_are_resolved_or_refused_with_the_fix():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device.*device='cpu'"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device here")
def test_cuda_equals_cpu():
    t, s, w, (pg, po) = random_pair(8, shape=(5, 300, 280))
    for step in (1, 8):
        cpu = harmonise_local_torch(t, s, w, 32, pg, po, residual=True, grid_step=step)
        gpu = harmonise_local_torch(
            t, s, w, 32, pg, po, residual=True, grid_step=step, device="cuda"
        )
        assert_same_fit(cpu, gpu)


# --------------------------------------------------------------------------- the backend switch


def test_fusion_config_validates_backend_and_device():
    assert FusionConfig().backend == "numba" and FusionConfig().device is None
    assert FusionConfig(backend="torch", device="cpu").params()["backend"] == "torch"
    with pytest.raises(ValueError, match="backend must be one of 'numba', 'torch', got 'jax'"):
        FusionConfig(backend="jax")
    with pytest.raises(ValueError, match="applies to backend='torch' only"):
        FusionConfig(device="cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        FusionConfig(backend="torch", device="gpu0")
    with pytest.raises(ValueError, match="device name"):
        FusionConfig(backend="torch", device=0)  # type: ignore[arg-type]


def test_a_missing_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # what an install without torch sees
    with pytest.raises(ImportError, match=r"pip install 'phyvlm-cr\[vlm\]'"):
        import_torch()
    with pytest.raises(ImportError, match="'vlm' extra"):
        FusionConfig(backend="torch")
    FusionConfig()  # the numba backend never needs it


@pytest.fixture(scope="module")
def small_cube():
    from pipeline.synthetic import make_stack

    return make_stack((6, 80, 72), bands=("B02", "B03", "B04", "B08", "B11"), seed=1).observed


@pytest.mark.parametrize("grid_step", [None, 1])
def test_restore_with_the_torch_backend_equals_numba(small_cube, grid_step):
    """The whole restoration (scene, prior, fusion) with backend='torch' on the CPU against
    numba: every output layer equal to 1e-5 (absolute, reflectance and [0, 1] layers)."""
    import pipeline

    fusion = {"harmonise_grid_step": grid_step}
    want = pipeline.restore(small_cube, fusion=fusion)
    got = pipeline.restore(small_cube, fusion={**fusion, "backend": "torch", "device": "cpu"})
    assert '"backend": "torch"' in got.attrs["fusion_params"]
    for name in want.data_vars:
        a, b = want[name].values, got[name].values
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-5, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(b, a, err_msg=name)
    assert np.isfinite(got["B04"].values).mean() > 0.5


def test_restore_reaches_the_torch_backend_and_refuses_bad_values(small_cube):
    import pipeline

    crop = small_cube.isel(y=slice(0, 32), x=slice(0, 32))
    with pytest.raises(ValueError, match="backend must be one of"):
        pipeline.restore(crop, backend="cupy")
    if not torch.cuda.is_available():  # the torch path is taken: it asks for the device
        with pytest.raises(RuntimeError, match="no CUDA device"):
            pipeline.restore(crop, backend="torch", device="cuda")


def test_restore_on_dask_chunks_with_the_torch_backend_equals_in_memory(small_cube):
    """The torch fit in ``map_overlap`` blocks (each with its ``origin`` and halo) gives the
    in-memory result, as the numba one does (``tests/test_restore.py``)."""
    import dask

    import pipeline

    options = {"backend": "torch", "device": "cpu"}
    eager = pipeline.restore(small_cube, **options)
    with dask.config.set(scheduler="synchronous"):
        lazy = pipeline.restore(small_cube.chunk({"y": 37, "x": 29}), **options).compute()
    for name in ("B02", "B11", "confidence", "gate", "reference_days"):
        np.testing.assert_allclose(
            lazy[name].values, eager[name].values, rtol=0, atol=1e-5, equal_nan=True, err_msg=name
        )
