"""CT liver data: HU windows, the synthetic Task03_Liver phantom, DecathlonLiverDataModule on NIfTI IO."""
from __future__ import annotations

import filecmp
import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

import datamodules.decathlon_liver as dl
from datamodules.decathlon_liver import DecathlonLiverDataModule
from datamodules.synthetic.ct_liver_phantom import (
    liver_phantom,
    main,
    write_liver_phantom,
)
from datamodules.transforms import HounsfieldWindowd, hounsfield_window

SHAPE = (32, 32, 24)
REAL_KEYS = {"name", "description", "reference", "licence", "release", "tensorImageSize", "modality",
             "labels", "numTraining", "numTest", "training", "test"}


def make_dm(root, **kw):
    args = {"data_root": str(root), "image_size": 32, "train_volumes": 5, "num_workers": 0}
    return DecathlonLiverDataModule(**{**args, **kw})


@pytest.fixture
def phantom_copy(phantom_root, tmp_path):
    """A writable copy of the session phantom (8 volumes of 32 x 32 x 24) to break in place."""
    return shutil.copytree(phantom_root, tmp_path / "Task03_Liver")


def load(path):
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


# -- HU windows ---------------------------------------------------------------------------------------------
def test_windows_map_to_expected_ranges():
    hu = torch.linspace(-1024, 3000, 5000)
    wide = hounsfield_window(hu, (-200, 300))
    assert wide.min() == 0 and wide.max() == 1
    narrow_ref = hounsfield_window(hu, (50, 150), scale_window=(-200, 300))
    assert narrow_ref.min() == pytest.approx(0.5) and narrow_ref.max() == pytest.approx(0.7)
    narrow_paper = hounsfield_window(hu, (50, 150))
    assert narrow_paper.min() == 0 and narrow_paper.max() == 1
    assert hounsfield_window(torch.tensor([100], dtype=torch.int16)).dtype == torch.float32
    with pytest.raises(ValueError, match="window"):
        hounsfield_window(hu, (300, -200))


def test_hounsfield_windowd_output_key_and_channels():
    sample = {"hu": torch.full((1, 4, 4), 50.0)}
    out = HounsfieldWindowd("hu", output_key="image", channels=3)(sample)
    assert out["image"].shape == (3, 4, 4) and torch.allclose(out["image"], torch.full((3, 4, 4), 0.5))
    assert out["hu"] is sample["hu"] and "image" not in sample
    narrow = HounsfieldWindowd("hu", (50, 150), scale_window=(-200, 300))(sample)["hu"]
    assert torch.allclose(narrow, torch.full((1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="single-channel"):
        HounsfieldWindowd("hu", channels=3)({"hu": torch.zeros(2, 4, 4)})


# -- phantom writer -----------------------------------------------------------------------------------------
def test_phantom_volumes_are_abdominal_ct_in_hu(phantom_root):
    liver_slices, n_slices = [], set()
    for n in range(8):
        image, img = load(phantom_root / "imagesTr" / f"liver_{n}.nii.gz")
        label, _ = load(phantom_root / "labelsTr" / f"liver_{n}.nii.gz")
        assert image.shape == label.shape and image.dtype == np.int16 and label.dtype == np.uint8
        assert image.shape[:2] == SHAPE[:2] and 0.7 * SHAPE[2] - 1 <= image.shape[2] <= 1.3 * SHAPE[2] + 1
        n_slices.add(image.shape[2])  # the scanned extent varies per patient
        assert set(np.unique(label)) <= {0, 1, 2} and (label == 1).any()
        sx, sy, sz = img.header.get_zooms()
        assert 0.7 <= sx <= 1.0 and 0.7 <= sy <= 1.0 and 2.0 <= sz <= 5.0
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        assert abs(image[:3, :3].mean() + 1000) < 20  # air outside the body
        assert 55 <= image[label == 1].mean() <= 110  # contrast-enhanced liver (edges blurred on small bodies)
        if (label == 2).sum() > 20:
            assert image[label == 2].mean() < image[label == 1].mean() - 20  # hypodense lesions
        assert (image.max(axis=(0, 1)) >= 400).all()  # vertebra in every slice
        assert image.min() >= -1024 and image.max() <= 3071
        liver_slices.append(np.isin(label, (1, 2)).any(axis=(0, 1)).mean())
    assert 0.25 <= np.mean(liver_slices) <= 0.7 and len(n_slices) > 2  # liver in about 2 / 5 of the slices
    assert (phantom_root / "imagesTr" / "._liver_0.nii.gz").is_file()
    assert (phantom_root / "labelsTr" / "._liver_0.nii.gz").is_file()


def test_phantom_dataset_json_has_the_real_format(phantom_root):
    meta = json.loads((phantom_root / "dataset.json").read_text())
    assert set(meta) == REAL_KEYS
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "cancer"}
    assert meta["numTraining"] == len(meta["training"]) == 8 and meta["numTest"] == len(meta["test"]) == 1
    assert meta["training"][3] == {"image": "./imagesTr/liver_3.nii.gz", "label": "./labelsTr/liver_3.nii.gz"}
    assert meta["test"] == ["./imagesTs/liver_9.nii.gz"]
    assert all((phantom_root / p).is_file() for e in meta["training"] for p in e.values())
    assert (phantom_root / meta["test"][0]).is_file()


def test_phantom_is_deterministic(tmp_path):
    a = write_liver_phantom(tmp_path / "a", n_volumes=2, n_test_volumes=0, shape=SHAPE, seed=3)
    b = write_liver_phantom(tmp_path / "b", n_volumes=2, n_test_volumes=0, shape=SHAPE, seed=3)
    for sub in ("imagesTr", "labelsTr"):
        assert filecmp.cmp(a / sub / "liver_1.nii.gz", b / sub / "liver_1.nii.gz", shallow=False)
    same = [liver_phantom(SHAPE, 3, 1) for _ in range(2)]
    assert all(np.array_equal(x, y) for x, y in zip(*same, strict=True))
    other = liver_phantom(SHAPE, 4, 1)
    assert not np.array_equal(same[0][0], other[0])
    assert not np.array_equal(liver_phantom(SHAPE, 3, 0)[0], same[0][0])  # patients differ


def test_phantom_command(tmp_path, capsys):
    root = tmp_path / "Task03_Liver"
    main(["--root", str(root), "--volumes", "2", "--test-volumes", "1", "--shape", "16", "16", "12"])
    assert "wrote" in capsys.readouterr().out
    assert load(root / "imagesTr" / "liver_1.nii.gz")[0].shape[:2] == (16, 16)


# -- DataModule ---------------------------------------------------------------------------------------------
def test_datamodule_samples_follow_the_batch_contract(phantom_root):
    dm = make_dm(phantom_root, slices_with_liver=3, slices_without_liver=2)
    dm.setup()
    assert dm.retrieval_dataset("val") is dm.retrieval_dataset("test")  # val_volumes=0: paper protocol
    train, test = dm.retrieval_dataset("train"), dm.retrieval_dataset("test")
    assert len(train) == 5 * 5 and len(test) == 3 * 5
    for split, ds in (("train", train), ("test", test)):
        per_patient = {}
        for i in range(len(ds)):
            s = ds[i]
            assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
            assert s["hu"].shape == s["mask"].shape == (1, 32, 32)
            assert s["hu"].dtype == s["mask"].dtype == torch.float32
            for key in ("label", "patient_id", "index", "slice_index"):
                assert s[key].dtype == torch.int64 and s[key].ndim == 0
            assert all(type(v) is torch.Tensor for v in s.values())  # no MONAI MetaTensor
            assert 0 <= s["image"].min() and s["image"].max() <= 1
            assert -1024 <= s["hu"].min() and s["hu"].max() <= 3071
            assert int(s["index"]) == i
            assert set(s["mask"].unique().tolist()) <= {0.0, 1.0}
            assert bool(s["mask"].any()) == bool(s["label"])
            assert torch.allclose(s["image"][0], hounsfield_window(s["hu"][0], (-200, 300)))
            per_patient.setdefault(int(s["patient_id"]), []).append(int(s["label"]))
        assert all(sorted(v) == [0, 0, 1, 1, 1] for v in per_patient.values())
        assert sorted(per_patient) == (list(range(5)) if split == "train" else [5, 6, 7])


def test_slices_match_the_nifti_volumes(phantom_root):
    ds = make_dm(phantom_root).retrieval_dataset("train")
    s = ds[7]
    pid, z = int(s["patient_id"]), int(s["slice_index"])
    image, _ = load(phantom_root / "imagesTr" / f"liver_{pid}.nii.gz")
    label, _ = load(phantom_root / "labelsTr" / f"liver_{pid}.nii.gz")
    # display orientation: rows anterior -> posterior, patient's right on the image left (= volume[:, :, z].T)
    assert np.array_equal(s["hu"][0].numpy(), image[:, :, z].T.astype(np.float32))
    assert np.array_equal(s["mask"][0].numpy() > 0, np.isin(label[:, :, z].T, (1, 2)))


def test_resizing_and_validation_split(phantom_root):
    dm = make_dm(phantom_root, image_size=48, val_volumes=2, slices_with_liver=2, slices_without_liver=2)
    dm.setup()
    ids = {split: {int(s["patient_id"]) for s in dm.retrieval_dataset(split)}
           for split in ("train", "val", "test")}
    assert ids == {"train": {0, 1, 2}, "val": {3, 4}, "test": {5, 6, 7}}
    s = dm.retrieval_dataset("val")[0]
    assert s["image"].shape == (3, 48, 48) and s["hu"].shape == s["mask"].shape == (1, 48, 48)
    assert set(s["mask"].unique().tolist()) <= {0.0, 1.0}


def test_macos_junk_entries_are_skipped(phantom_copy):
    meta_path = phantom_copy / "dataset.json"
    meta = json.loads(meta_path.read_text())
    junk = {"image": "./imagesTr/._liver_0.nii.gz", "label": "./labelsTr/._liver_0.nii.gz"}
    meta["training"].insert(0, junk)
    meta_path.write_text(json.dumps(meta))
    ds = make_dm(phantom_copy).retrieval_dataset("train")
    assert {int(s["patient_id"]) for s in ds} == set(range(5))


def test_cache_skips_decoding_on_second_setup(phantom_root, tmp_path, monkeypatch):
    calls = []
    real_loader = dl.load_nifti

    def counting_loader(path):
        calls.append(path.name)
        return real_loader(path)

    monkeypatch.setattr(dl, "load_nifti", counting_loader)
    cache = tmp_path / "cache"
    first = make_dm(phantom_root, cache_dir=str(cache))
    first.setup()
    assert len(calls) == 2 * 8  # each volume decoded exactly once (label, then image)
    first.setup()
    list(first.retrieval_dataset("train"))
    assert len(calls) == 16  # in memory: a second setup / an epoch never decodes again
    assert not list(cache.glob("*.tmp*")) and len(list(cache.glob("*.npz"))) == 8
    second = make_dm(phantom_root, cache_dir=str(cache))
    second.setup()
    assert len(calls) == 16  # persistent cache: nothing decoded
    a, b = first.retrieval_dataset("test")[4], second.retrieval_dataset("test")[4]
    assert all(torch.equal(a[k], b[k]) for k in a)
    make_dm(phantom_root, cache_dir=str(cache), slice_seed=1).setup()
    assert len(calls) == 32  # other settings, other cache entries


def test_missing_root_suggests_the_phantom(tmp_path):
    with pytest.raises(FileNotFoundError, match="synthesize_if_missing"):
        make_dm(tmp_path / "nowhere" / "Task03_Liver").setup()


def test_synthesize_if_missing_writes_the_phantom(tmp_path, caplog):
    root = tmp_path / "phantom" / "Task03_Liver"
    dm = make_dm(root, synthesize_if_missing=True, phantom_volumes=3, train_volumes=2)
    with caplog.at_level(logging.WARNING, logger="datamodules.decathlon_liver"):
        dm.prepare_data()
    assert "SYNTHETIC" in caplog.text and str(root) in caplog.text
    assert (root / "dataset.json").is_file() and not list(root.parent.glob(".*tmp*"))
    dm.setup()
    assert len(dm.retrieval_dataset("test")) == 10


def test_missing_dataset_json(phantom_copy):
    (phantom_copy / "dataset.json").unlink()
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        make_dm(phantom_copy).setup()


@pytest.mark.parametrize("content, match", [
    ("{not json", r"dataset\.json is not valid JSON"),
    ('{"name": "LiTS"}', "missing key 'training'"),
    ('{"training": [{"image": "./imagesTr/liver_0.nii.gz"}]}', r"training\[0\]"),
])
def test_malformed_dataset_json(phantom_copy, content, match):
    (phantom_copy / "dataset.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        make_dm(phantom_copy).setup()


def test_listed_file_missing(phantom_copy):
    (phantom_copy / "labelsTr" / "liver_3.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"labelsTr/liver_3\.nii\.gz.*training\[3\]"):
        make_dm(phantom_copy).setup()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_volume(phantom_copy, damage):
    path = phantom_copy / "imagesTr" / "liver_4.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a nifti file" * 100)
    with pytest.raises(ValueError, match=r"imagesTr/liver_4\.nii\.gz.*corrupt or truncated"):
        make_dm(phantom_copy).setup()


def test_label_shape_differs_from_image(phantom_copy):
    label_path = phantom_copy / "labelsTr" / "liver_1.nii.gz"
    label, img = load(label_path)
    nib.save(nib.Nifti1Image(label[:, :, :20], img.affine), str(label_path))
    expected = rf"imagesTr/liver_1\.nii\.gz.*\(32, 32, {label.shape[2]}\).*labelsTr/liver_1\.nii\.gz.*\(32, 32, 20\)"
    with pytest.raises(ValueError, match=expected):
        make_dm(phantom_copy).setup()


def test_volume_without_liver_is_skipped_with_a_warning(phantom_copy):
    label_path = phantom_copy / "labelsTr" / "liver_2.nii.gz"
    label, img = load(label_path)
    nib.save(nib.Nifti1Image(np.zeros_like(label), img.affine), str(label_path))
    dm = make_dm(phantom_copy)
    with pytest.warns(UserWarning, match=r"labelsTr/liver_2\.nii\.gz: no liver"):
        dm.setup()
    assert {int(s["patient_id"]) for s in dm.retrieval_dataset("train")} == {0, 1, 3, 4}


def test_too_few_volumes_for_train_volumes(phantom_root):
    with pytest.raises(ValueError, match="train_volumes=8"):
        make_dm(phantom_root, train_volumes=8).setup()
    with pytest.raises(ValueError, match="val_volumes"):
        make_dm(phantom_root, val_volumes=5)


def test_display_orientation_follows_the_affine(phantom_root, phantom_copy):
    for sub in ("imagesTr", "labelsTr"):  # store liver_0 in RAS order instead of LPS: same anatomy on screen
        path = phantom_copy / sub / "liver_0.nii.gz"
        ras = nib.as_closest_canonical(nib.load(str(path)))
        nib.save(nib.Nifti1Image(np.asanyarray(ras.dataobj), ras.affine), str(path))
    assert nib.aff2axcodes(load(phantom_copy / "imagesTr" / "liver_0.nii.gz")[1].affine) == ("R", "A", "S")
    a = make_dm(phantom_root).retrieval_dataset("train")[0]
    b = make_dm(phantom_copy).retrieval_dataset("train")[0]
    assert int(a["patient_id"]) == int(b["patient_id"]) == 0
    assert torch.equal(a["hu"], b["hu"]) and torch.equal(a["mask"], b["mask"])
