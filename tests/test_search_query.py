"""Query files: DICOM pixels exactly as pydicom's Modality / VOI LUTs give them, on the real files that ship
with pydicom and pydicom-data, and every one of them returns k results from the phantom indexes."""
from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest

from search.preprocess import model_input
from search.query import QueryError, load_query, voi_output_range
from tests.search_fixtures import K, lesion_service, service, shipped_file

pydicom = pytest.importorskip("pydicom")
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402

REAL = ["CT_small.dcm", "MR_small.dcm", "RG1_UNCI.dcm", "693_UNCI.dcm", "emri_small.dcm"]


def _real(name):
    path = shipped_file(name)
    if path is None:
        pytest.skip(f"{name} not installed (pydicom / pydicom-data)")
    return path


@pytest.mark.parametrize("name", REAL)
def test_dicom_pixels_match_pydicom(name):
    path = _real(name)
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array if int(ds.get("NumberOfFrames") or 1) > 1 else ds.pixel_array[None]
    for z in sorted({0, len(frames) // 2, len(frames) - 1}):
        q = load_query(path.read_bytes(), path.name, z)
        assert q.n_slices == len(frames) and q.slice_index == z
        modality = apply_modality_lut(frames[z], ds)
        if ds.Modality == "CT":  # Hounsfield units from RescaleSlope / RescaleIntercept
            assert q.unit == "hu"
            np.testing.assert_array_equal(q.pixels, modality.astype(np.float32))
            continue
        voi = apply_voi_lut(modality, ds).astype(np.float64)
        if "WindowCenter" in ds:
            lo, hi = voi_output_range(ds)
            # the range is pydicom's own: values far outside the window land exactly on it
            np.testing.assert_array_equal(apply_voi_lut(np.array([-1e9, 1e9]), ds), [lo, hi])
        else:
            lo, hi = voi.min(), voi.max()
        expected = np.clip((voi - lo) / (hi - lo), 0, 1)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            expected = 1 - expected  # MONOCHROME1: the lowest value is white
        assert q.unit == "display"
        np.testing.assert_allclose(q.pixels, expected, atol=1e-6)


def test_monochrome1_chest_radiograph_is_inverted():
    """RG1_UNCI (PA chest radiograph, MONOCHROME1): after inversion the lungs are darker than the spine."""
    q = load_query(_real("RG1_UNCI.dcm").read_bytes(), "RG1_UNCI.dcm")
    h, w = q.pixels.shape
    lungs = np.r_[q.pixels[h // 3:h // 2, w // 5:w // 3], q.pixels[h // 3:h // 2, 2 * w // 3:4 * w // 5]].mean()
    spine = q.pixels[h // 3:h // 2, w // 2 - w // 30:w // 2 + w // 30].mean()
    assert lungs < spine, (lungs, spine)


@pytest.mark.parametrize("name", REAL)
def test_real_dicom_queries_return_k_results(name, one_thread):
    path = _real(name)
    for svc in (service(), lesion_service()):
        out = svc.search_file(path.read_bytes(), path.name, k=K, previews=True)
        d = [r["distance"] for r in out["results"]]
        assert len(d) == K and d == sorted(d) and all(np.isfinite(d))
        assert out["query"]["display"].startswith("data:image/png;base64,")


def test_nifti_slices_and_crop():
    vol = np.random.default_rng(0).normal(40, 30, size=(40, 30, 6)).astype(np.float32)
    data = nib.Nifti1Image(vol, np.diag([-1.0, -1.0, 1.0, 1.0])).to_bytes()
    q = load_query(data, "v.nii", 4)
    assert q.n_slices == 6 and q.slice_index == 4 and q.unit == "raw" and q.pixels.shape == (30, 40)
    assert load_query(data, "v.nii").slice_index == 3
    with pytest.raises(QueryError, match="slice 6 out of range"):
        load_query(data, "v.nii", 6)
    prep = service().prep
    x = model_input(q, prep, crop=(0.25, 0.25, 0.75, 0.75))
    assert x.shape == (3, prep.size, prep.size) and 0 <= float(x.min()) and float(x.max()) <= 1
    with pytest.raises(QueryError, match="at least"):
        model_input(q, prep, crop=(0.5, 0.5, 0.55, 0.55))
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray((np.arange(64 * 48).reshape(48, 64) % 256).astype(np.uint16) + 32768 - 100).save(png, "PNG")
    p = load_query(png.getvalue(), "slice.png")  # 16-bit PNG: HU + 32768 (DeepLesion)
    assert p.unit == "hu" and p.pixels.min() == -100
