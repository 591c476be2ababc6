"""BraTS reader and synthetic writer: layout, contrasts, normalisation, splits, orientation from real NIfTI
headers (nibabel's test files), and one clear error per bad input."""
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.brats import BraTSDataModule, find_cases, select_slices
from datamodules.decathlon_liver import to_display
from datamodules.synthetic.brats import brats_phantom, case_files, write_brats_phantom

pytestmark = pytest.mark.usefixtures("one_thread")


def small_dm(root, **kw):
    args = dict(image_size=32, attribute_mask_size=32, num_workers=0, val_fraction=0.3, test_fraction=0.3)
    return BraTSDataModule(str(root), **{**args, **kw})


def test_phantom_layout_is_deterministic_with_non_contiguous_ids(tmp_path):
    a = write_brats_phantom(tmp_path / "a", n_patients=3, shape=(24, 24, 8), seed=3)
    b = write_brats_phantom(tmp_path / "b", n_patients=3, shape=(24, 24, 8), seed=3)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and all(n.startswith("BraTS2021_") for n in names)
    ids = [int(n.split("_")[1]) for n in names]
    assert ids != list(range(ids[0], ids[0] + 3)) or ids[0] != 0  # not simply 0, 1, 2
    for name in names:
        for f in sorted((a / name).iterdir()):
            assert f.name.startswith(name + "_") and f.name.endswith(".nii.gz")
            assert np.array_equal(nib.load(f).get_fdata(), nib.load(b / name / f.name).get_fdata())
    seg = np.asarray(nib.load(a / names[0] / f"{names[0]}_seg.nii.gz").dataobj)
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2, 4}


def test_phantom_contrasts_behave_like_the_sequences():
    vols, seg, _, tissue = brats_phantom((48, 48, 16), seed=0, patient=4, with_tissue=True)
    normal = seg == 0
    csf, gm, wm = ((tissue[i] > 0.8) & normal for i in range(3))
    mean = {k: {t: float(v[m].mean()) for t, m in (("csf", csf), ("gm", gm), ("wm", wm), ("oed", seg == 2),
                                                      ("enh", seg == 4))} for k, v in vols.items()}
    t1, t1ce, t2, flair = (mean[k] for k in ("t1", "t1ce", "t2", "flair"))
    assert t1["wm"] > t1["gm"] > t1["csf"]
    assert t2["csf"] > t2["gm"] > t2["wm"]
    assert flair["csf"] < flair["wm"] < flair["oed"]
    assert t1ce["enh"] / t1ce["wm"] > 1.1 > t1["enh"] / t1["wm"]
    assert set(np.unique(seg)) == {0, 1, 2, 4}
    assert all(float(v[~(tissue.sum(0) > 0.3)].max()) == 0 for v in vols.values())  # skull-stripped


def test_reader_items_splits_and_normalisation(brats_root):
    dm = small_dm(brats_root)
    dm.setup()
    splits = {s: dm.retrieval_dataset(s) for s in ("train", "val", "test")}
    patients = {s: {int(ds[i]["patient_id"]) for i in range(len(ds))} for s, ds in splits.items()}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert sum(len(p) for p in patients.values()) == 20
    item = splits["train"][5]
    assert item["image"].shape == (1, 32, 32) and item["mask"].shape == (1, 32, 32)
    assert item["attributes"].shape == (sum(dm.attribute_layout.values()),)
    assert int(item["sequence"]) == 1 and int(item["label"]) in (0, 1, 2)
    slc = dm.slice_datasets["train"][1]
    assert slc["image"].shape == (4, 32, 32) and torch.equal(slc["image"][1:2], item["image"])
    assert float(slc["mask"].sum()) > 0      # the largest tumour slice
    # z-scored over the brain of the volume: in the tumour's slice, brain values are centred near 0
    brain = slc["image"] != 0
    assert abs(float(slc["image"][brain].mean())) < 0.7 and 0.4 < float(slc["image"][brain].std()) < 2.0
    assert len(dm.slice_datasets["val"]) == 6 and len(splits["val"]) == 24


def test_select_slices():
    areas = np.array([0, 5, 9, 9, 2, 0, 7])
    assert select_slices(areas, 2).tolist() == [2, 3]
    assert select_slices(areas, 3, "spread").tolist() == [1, 3, 6]
    assert select_slices(areas, 9).tolist() == [1, 2, 3, 4, 6]        # only slices with tumour


def test_2023_naming(tmp_path):
    root = write_brats_phantom(tmp_path / "BraTS2023", n_patients=3, shape=(24, 24, 8), naming="2023")
    cases = find_cases(root, "2023")
    assert len(cases) == 3 and cases[0].files["t1ce"].name.endswith("-t1c.nii.gz")
    seg = np.asarray(nib.load(cases[0].files["seg"]).dataobj)
    assert 3 in seg and 4 not in seg
    dm = BraTSDataModule(str(root), naming="2023", image_size=24, attribute_mask_size=24, num_workers=0)
    assert dm.decode_case(cases[0])["images"].shape[1:] == (4, 24, 24)
    with pytest.raises(FileNotFoundError, match="no BraTS case folders"):
        find_cases(root, "2021")


def case_from(path, folder, transform=lambda a: a, affine=None):
    """A BraTS case whose four sequences are the real volume ``path`` (a nibabel test file), stored as
    ``transform(array)`` with ``affine``; the tumour is the brightest 3 % of the volume."""
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.int16)
    seg = np.where(data > np.percentile(data, 97), 2, 0).astype(np.uint8)
    affine = img.affine if affine is None else affine
    folder.mkdir(parents=True)
    for s in ("t1", "t1ce", "t2", "flair", "seg"):
        array = transform(seg if s == "seg" else data).copy()
        nib.save(nib.Nifti1Image(array, affine), str(folder / f"{folder.name}_{s}.nii.gz"))
    return data, seg


def test_orientation_from_real_nifti_headers(tmp_path):
    """nibabel's anatomical.nii (33 x 41 x 25, LAS): the slice shown is the same when the file stores x
    flipped (its affine saying so) or the axial axis first, and it is the radiological display."""
    from nibabel.testing import data_path

    src = os.path.join(data_path, "anatomical.nii")
    aff = nib.load(src).affine
    data, seg = case_from(src, tmp_path / "a" / "BraTS2021_00001")
    flipped = aff.copy()
    flipped[:, 0] *= -1
    flipped[:3, 3] = aff[:3, 3] + aff[:3, 0] * (data.shape[0] - 1)
    case_from(src, tmp_path / "b" / "BraTS2021_00001", lambda a: a[::-1], flipped)
    case_from(src, tmp_path / "c" / "BraTS2021_00001", lambda a: np.moveaxis(a, 2, 0), aff[:, [2, 0, 1, 3]])
    out = [small_dm(tmp_path / k, image_size=41).decode_case(find_cases(tmp_path / k)[0]) for k in "abc"]
    assert out[0]["images"].shape[1:] == (4, 41, 41)
    for other in out[1:]:
        assert np.array_equal(other["slice_index"], out[0]["slice_index"])
        assert np.allclose(other["images"], out[0]["images"], atol=1e-5)
        assert np.array_equal(other["mask"], out[0]["mask"])
    z = int(out[0]["slice_index"][0])
    expected = to_display((seg[:, :, z] > 0)[None].astype(np.uint8), aff)[0]   # rows A -> P, cols R -> L
    assert expected.shape == (41, 33)
    assert np.array_equal(out[0]["mask"][0][:, 4:37], expected)                # padded to a square


def test_bad_inputs_are_one_clear_error_each(tmp_path, brats_root):
    from nibabel.testing import data_path

    root = tmp_path / "bad"
    shutil.copytree(brats_root, root)
    cases = find_cases(root)
    # a 4-D file (nibabel's example4d.nii.gz) in place of a sequence
    shutil.copy(os.path.join(data_path, "example4d.nii.gz"), cases[0].files["t2"])
    with pytest.raises(ValueError, match=r"BraTS2021_\d+_t2.nii.gz: expected a 3-D volume"):
        small_dm(root).decode_case(cases[0])
    # sequences of different shapes
    img = nib.load(cases[1].files["seg"])
    nib.save(nib.Nifti1Image(np.zeros((32, 30, 12), np.int16), img.affine), str(cases[1].files["flair"]))
    with pytest.raises(ValueError, match=r"_flair.nii.gz has shape \(32, 30, 12\) but .*_seg.nii.gz has shape"):
        small_dm(root).decode_case(cases[1])
    # a label outside {0, 1, 2, 4}
    seg = np.asarray(nib.load(cases[2].files["seg"]).dataobj).copy()
    seg[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(seg, img.affine), str(cases[2].files["seg"]))
    with pytest.raises(ValueError, match=r"_seg.nii.gz: segmentation labels \[3\] outside"):
        small_dm(root).decode_case(cases[2])
    # more slices than the volume has
    with pytest.raises(ValueError, match="slices_per_patient=13 but .* has only 12 axial slices"):
        small_dm(root, slices_per_patient=13).decode_case(cases[3])
    # no tumour in any slice: skipped with a warning and a count, or an error on request
    nib.save(nib.Nifti1Image(np.zeros_like(seg), img.affine), str(cases[4].files["seg"]))
    with pytest.raises(ValueError, match="no tumour voxel .*empty_tumour=error"):
        small_dm(root, empty_tumour="error").decode_case(cases[4])
    assert int(small_dm(root).decode_case(cases[4])["skipped"]) == 1
    # a case folder missing one sequence
    os.remove(cases[5].files["t1ce"])
    with pytest.raises(FileNotFoundError, match=r"missing BraTS2021_\d+_t1ce.nii.gz \(the t1ce sequence\)"):
        find_cases(root)


def test_empty_cases_are_skipped_with_a_count(tmp_path, brats_root, caplog):
    root = tmp_path / "empty"
    shutil.copytree(brats_root, root)
    case = find_cases(root)[0]
    img = nib.load(case.files["seg"])
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(case.files["seg"]))
    dm = small_dm(root)
    with pytest.warns(UserWarning, match="no tumour voxel"):
        dm.setup()
    assert dm.skipped == [case.name] and "1 of 20 cases skipped" in caplog.text
    assert sum(len(dm.retrieval_dataset(s)) for s in ("train", "val", "test")) == 19 * 4


def test_bad_settings(brats_root):
    for kw, match in ((dict(naming="2019"), "naming"), (dict(slice_selection="best"), "slice_selection"),
                      (dict(empty_tumour="drop"), "empty_tumour"), (dict(size_class_edges=(0.2, 0.1)), "edges"),
                      (dict(val_fraction=0.6, test_fraction=0.5), "fraction")):
        with pytest.raises(ValueError, match=match):
            small_dm(brats_root, **kw)
    with pytest.raises(FileNotFoundError, match="synthesize_if_missing"):
        small_dm(brats_root / "nowhere").setup()
    assert case_files(brats_root, 7)[1]["t1ce"].name == "BraTS2021_00007_t1ce.nii.gz"
