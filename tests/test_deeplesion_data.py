"""DeepLesion data: the synthetic DL_info.csv + 16-bit PNG phantom, lesion crops, Frangi vesselness and
DeepLesionDataModule on the real file formats (CSV parsing, PNG decoding, caching, errors)."""
from __future__ import annotations

import csv
import filecmp
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import datamodules.deeplesion as dl
from datamodules.deeplesion import DeepLesionDataModule, lesion_crop, read_dl_info, read_hu_png
from datamodules.synthetic.deeplesion import main, write_deeplesion_phantom, write_hu_png
from datamodules.transforms.frangi import PAPER_SIGMAS, Frangid, frangi_sigmas, frangi_vesselness

# The header of the real DL_info.csv (NIH DeepLesion release), in order.
REAL_COLUMNS = ["File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index",
                "Measurement_coordinates", "Bounding_boxes", "Lesion_diameters_Pixel_",
                "Normalized_lesion_location",
                "Coarse_lesion_type", "Possibly_noisy", "Slice_range", "Spacing_mm_px_", "Image_size",
                "DICOM_windows", "Patient_gender", "Patient_age", "Train_Val_Test"]
SIZE = 128
FAST_FRANGI = dict(frangi=True, frangi_scales=(1.0, 3.0, 1.0))  # 3 scales: the cache logic, not the filter


@pytest.fixture(scope="module")
def lesion_root(tmp_path_factory):
    """A 24-patient phantom (about 230 lesions, 128 x 128 slices; every type in val and test)."""
    return write_deeplesion_phantom(tmp_path_factory.mktemp("dl") / "DeepLesion", n_patients=24, seed=0)


@pytest.fixture
def root_copy(lesion_root, tmp_path):
    return shutil.copytree(lesion_root, tmp_path / "DeepLesion")


def read_rows(root):
    with open(root / "DL_info.csv", newline="") as f:
        return list(csv.DictReader(f))


def write_rows(root, rows, columns=REAL_COLUMNS):
    with open(root / "DL_info.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def make_dm(root, **kw):
    return DeepLesionDataModule(**{"data_root": str(root), "num_workers": 0, **kw})


def numbers(text):
    return [float(v) for v in text.split(",")]


# -- phantom files ------------------------------------------------------------------------------------------
def test_csv_has_the_real_columns_and_quoted_lists(lesion_root):
    text = (lesion_root / "DL_info.csv").read_text()
    assert text.splitlines()[0].split(",") == REAL_COLUMNS
    rows = read_rows(lesion_root)
    assert 150 <= len(rows) <= 350
    first = text.splitlines()[1]
    assert f'"{rows[0]["Bounding_boxes"]}"' in first and ", " in rows[0]["Bounding_boxes"]
    for r in rows:
        assert len(numbers(r["Measurement_coordinates"])) == 8
        assert len(numbers(r["Normalized_lesion_location"])) == 3
        x1, y1, x2, y2 = numbers(r["Bounding_boxes"])
        assert 0 <= x1 <= x2 <= SIZE - 1 and 0 <= y1 <= y2 <= SIZE - 1
        long_d, short_d = numbers(r["Lesion_diameters_Pixel_"])
        assert long_d >= short_d > 0
        assert r["Image_size"] == f"{SIZE}, {SIZE}" and len(numbers(r["Spacing_mm_px_"])) == 3
        lo, hi = numbers(r["Slice_range"])
        assert lo <= int(r["Key_slice_index"]) <= hi
        assert r["File_name"] == (f"{int(r['Patient_index']):06d}_{int(r['Study_index']):02d}_"
                                  f"{int(r['Series_ID']):02d}_{int(r['Key_slice_index']):03d}.png")
        assert r["Patient_gender"] in ("M", "F") and r["Possibly_noisy"] in ("0", "1")


def test_pngs_are_16_bit_ct_in_hu(lesion_root):
    rows = read_rows(lesion_root)
    names = sorted({r["File_name"] for r in rows})
    for name in names[:20]:
        folder, slice_png = name.rsplit("_", 1)
        path = lesion_root / "Images_png" / folder / slice_png
        with Image.open(path) as img:
            assert img.mode == "I;16" and img.size == (SIZE, SIZE)
        hu = read_hu_png(path)
        assert hu.dtype == np.int32 and -1024 <= hu.min() and hu.max() <= 3071
        assert abs(np.median(hu[:4, :4]) + 1000) < 40  # air around the body
        assert (hu > 300).any()  # bone


def test_png_round_trip_is_exact(tmp_path):
    hu = np.arange(-1024, 3072, dtype=np.int32).reshape(64, 64)
    write_hu_png(tmp_path / "a.png", hu)
    assert np.array_equal(read_hu_png(tmp_path / "a.png"), hu)


def test_lesion_types_look_different(lesion_root):
    """Lung nodules are dense spots in air, liver lesions hypodense in enhanced liver, bone lesions lytic or
    sclerotic; and a 1-nearest-neighbour on raw crops recognises types across patients above chance."""
    rows = read_dl_info(lesion_root)
    looks = {k: [] for k in range(1, 9)}
    for r in rows:
        if r.lesion_type > 0:
            hu = read_hu_png(r.png(lesion_root))
            x1, y1, x2, y2 = r.box
            centre = hu[int(round((y1 + y2) / 2)), int(round((x1 + x2) / 2))]
            looks[r.lesion_type].append((centre, np.median(lesion_crop(hu, r.box, 32))))
    lung, liver, bone = (np.array(looks[k]) for k in (5, 4, 1))
    assert np.median(lung[:, 1]) < -300 and np.median(lung[:, 0]) > np.median(lung[:, 1]) + 200
    assert np.median(liver[:, 0]) < 45 and np.median(liver[:, 1]) > 0
    assert ((bone[:, 0] < 150) | (bone[:, 0] > 500)).mean() > 0.8
    dm = make_dm(lesion_root, include_unlabelled=False)
    dm.setup()

    def pooled(*splits):
        samples = [ds[i] for ds in (dm.datasets[s] for s in splits) for i in range(len(ds))]
        x = torch.stack([s["hu"] for s in samples]).clamp(-1000, 1000)
        return torch.nn.functional.avg_pool2d(x, 4).flatten(1), torch.stack([s["label"] for s in samples])

    (xg, yg), (xq, yq) = pooled("train", "val"), pooled("test")   # train is unlabelled, as in the real data
    accuracy = (yg[torch.cdist(xq, xg).argmin(1)] == yq).float().mean()
    assert accuracy > 0.3, accuracy  # chance (largest class) is about 0.2; gallery = the ~70 val lesions only


def test_splits_by_patient_and_unlabelled_only_in_train(lesion_root):
    rows = read_rows(lesion_root)
    patients = {s: {r["Patient_index"] for r in rows if r["Train_Val_Test"] == s} for s in "123"}
    assert all(patients.values())
    assert not (patients["1"] & patients["2"] or patients["1"] & patients["3"])
    assert not patients["2"] & patients["3"]
    unlabelled = [r for r in rows if r["Coarse_lesion_type"] == "-1"]
    assert unlabelled and all(r["Train_Val_Test"] == "1" for r in unlabelled)
    for split in "23":  # every type in val and test
        types = {int(r["Coarse_lesion_type"]) for r in rows if r["Train_Val_Test"] == split}
        assert types == set(range(1, 9))
    studies = {}
    for r in rows:
        studies.setdefault(r["Patient_index"], set()).add(r["Study_index"])
    assert np.mean([len(s) > 1 for s in studies.values()]) > 0.8  # lesions recur across studies


def test_writer_is_deterministic_and_has_a_command(tmp_path):
    a = write_deeplesion_phantom(tmp_path / "a", n_patients=4, seed=3)
    main(["--root", str(tmp_path / "b"), "--patients", "4", "--seed", "3"])
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all(filecmp.cmp(a / f, tmp_path / "b" / f, shallow=False) for f in files)
    c = write_deeplesion_phantom(tmp_path / "c", n_patients=4, seed=4)
    assert (c / "DL_info.csv").read_text() != (a / "DL_info.csv").read_text()


# -- crops --------------------------------------------------------------------------------------------------
PATTERN = np.arange(SIZE * SIZE, dtype=np.int32).reshape(SIZE, SIZE) - 1024  # every pixel unique


def window_of(crop):
    """Top-left (row, col) of a pattern crop."""
    r, c = divmod(int(crop[0, 0]) + 1024, SIZE)
    assert np.array_equal(crop, PATTERN[r:r + crop.shape[0], c:c + crop.shape[1]])
    return r, c


def test_crop_is_centred_on_the_box_and_exact():
    crop = lesion_crop(PATTERN, (50, 40, 70, 60), 64)  # box centre (60, 50): window 29..92 x 19..82
    assert crop.dtype == np.float32 and window_of(crop) == (19, 29)


@pytest.mark.parametrize("box", [(0, 50, 6, 58), (121, 50, 127, 58), (50, 0, 58, 5), (50, 122, 58, 127),
                                 (0, 0, 9, 9), (118, 119, 127, 127), (2.4, 60.2, 30.7, 70.9)])
def test_crop_at_borders_stays_in_the_image_and_holds_the_lesion(box):
    r, c = window_of(lesion_crop(PATTERN, box, 64))
    assert 0 <= r <= SIZE - 64 and 0 <= c <= SIZE - 64
    x1, y1, x2, y2 = box
    assert c <= np.floor(x1) and np.ceil(x2) < c + 64 and r <= np.floor(y1) and np.ceil(y2) < r + 64


def test_large_box_is_taken_whole_and_resized_small_image_padded():
    hu = np.zeros((SIZE, SIZE), np.int32)
    hu[20:100, 30:50] = 1000  # an 80-row lesion
    crop = lesion_crop(hu, (30, 20, 49, 99), 32)
    assert crop.shape == (32, 32) and crop[:, 16].min() > 900  # whole height kept (longer side)
    assert crop.max() == 1000 and crop.min() == 0
    assert 0.15 < (crop > 500).mean() < 0.35  # aspect kept: 20 / 81 of the width
    small = lesion_crop(np.full((40, 40), 50), (10, 10, 20, 20), 64)
    assert small.shape == (64, 64) and (small == 50).sum() == 1600
    assert (small == dl.AIR_HU).sum() == 64 * 64 - 1600


# -- Frangi -------------------------------------------------------------------------------------------------
def tube(n=64, width=2.0, noise=0.0):
    """A bright vessel: Gaussian profile across an arc of radius 45 px (plus Gaussian noise)."""
    yy, xx = np.mgrid[:n, :n]
    dist = np.abs(np.hypot(yy - n / 2 - 45, xx - n / 2) - 45)
    image = np.exp(-dist ** 2 / (2 * width ** 2))
    return image + np.random.default_rng(0).normal(0, noise, image.shape), dist


@pytest.mark.parametrize("black_ridges", [False, True])
def test_frangi_matches_scikit_image(black_ridges, lesion_root):
    skimage_frangi = pytest.importorskip("skimage.filters").frangi
    rng = np.random.default_rng(0)
    crop = lesion_crop(read_hu_png(read_dl_info(lesion_root)[0].png(lesion_root)), (40, 40, 60, 60), 64)
    windowed = (np.clip(crop, -1024, 3071) + 1024) / 4095  # float32, as the DataModule filters it
    images = [rng.normal(size=(64, 64)), rng.random((37, 50)), tube()[0], windowed]
    for image in images:
        ours = frangi_vesselness(image, black_ridges=black_ridges)
        ref = skimage_frangi(image, sigmas=PAPER_SIGMAS, alpha=1.0, beta=0.6, gamma=0.0444,
                             black_ridges=black_ridges)
        assert ours.dtype == ref.dtype and np.allclose(ours, ref, rtol=0, atol=1e-6)
    auto = frangi_vesselness(images[1], sigmas=(1.0, 2.5), gamma=None, black_ridges=black_ridges)
    assert np.allclose(auto, skimage_frangi(images[1], sigmas=(1.0, 2.5), beta=0.6, gamma=None,
                                            black_ridges=black_ridges), atol=1e-9)
    single = images[0].astype(np.float32)
    assert np.allclose(frangi_vesselness(single, black_ridges=black_ridges),
                       skimage_frangi(single, sigmas=PAPER_SIGMAS, beta=0.6, gamma=0.0444,
                                      black_ridges=black_ridges), atol=1e-5)


def test_frangi_batches_tensors_and_checks_parameters():
    rng = np.random.default_rng(1)
    batch = rng.random((3, 2, 32, 32))
    out = frangi_vesselness(torch.from_numpy(batch), sigmas=(1.0, 2.0))
    assert isinstance(out, torch.Tensor) and out.shape == batch.shape
    assert np.allclose(out[2, 1].numpy(), frangi_vesselness(batch[2, 1], sigmas=(1.0, 2.0)))
    assert len(PAPER_SIGMAS) == 41 and frangi_sigmas(1, 9, 0.2) == PAPER_SIGMAS
    with pytest.raises(ValueError, match="sigmas"):
        frangi_vesselness(batch, sigmas=(0.0,))
    with pytest.raises(ValueError, match="beta"):
        frangi_vesselness(batch, beta=0)


def test_frangid_responds_on_a_bright_tube():
    image, dist = tube(noise=0.01)
    out = Frangid("image", output_key="vesselness")({"image": torch.from_numpy(image)[None].float()})
    v = out["vesselness"][0].numpy()
    assert out["image"].shape == (1, 64, 64) and v.shape == (64, 64)
    on, off = v[(dist < 1) & (np.abs(np.mgrid[:64, :64][0] - 32) < 20)], v[dist > 12]
    assert on.mean() > 0.5 and off.max() < 0.05
    dark = Frangid("image", black_ridges=True)({"image": image[None]})["image"]
    assert dark[0][dist < 1].max() < 0.05  # wrong polarity: no response


# -- DataModule ---------------------------------------------------------------------------------------------
def test_samples_follow_the_batch_contract(lesion_root):
    dm = make_dm(lesion_root)
    dm.setup()
    rows = read_rows(lesion_root)
    for split, code in (("train", "1"), ("val", "2"), ("test", "3")):
        ds = dm.retrieval_dataset(split)
        assert len(ds) == sum(r["Train_Val_Test"] == code for r in rows) == len(dm.rows[split])
        s = ds[len(ds) - 1]
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
        assert 0 <= s["image"].min() and s["image"].max() <= 1 and s["hu"].shape == (1, 64, 64)
        for key in ("label", "patient_id", "study_id", "index"):
            assert s[key].dtype == torch.int64 and s[key].ndim == 0
        assert int(s["index"]) == len(ds) - 1
        assert int(s["patient_id"]) == dm.rows[split][-1].patient_id
    labels = {split: {int(dm.datasets[split][i]["label"]) for i in range(len(dm.datasets[split]))}
              for split in ("train", "val", "test")}
    assert -1 in labels["train"] and labels["val"] <= set(range(1, 9)) and labels["test"] <= set(range(1, 9))
    batch = next(iter(dm.predict_dataloader()))
    assert batch["image"].shape[1:] == (3, 64, 64)
    labelled = make_dm(lesion_root, include_unlabelled=False)
    labelled.setup()
    assert all(r.lesion_type > 0 for r in labelled.rows["train"])


def test_hu_read_back_exactly(root_copy):
    rows = read_rows(root_copy)
    target = next(r for r in rows if r["Train_Val_Test"] == "2")
    folder, slice_png = target["File_name"].rsplit("_", 1)
    write_hu_png(root_copy / "Images_png" / folder / slice_png, PATTERN)
    for r in rows:
        if r["File_name"] == target["File_name"]:
            r["Bounding_boxes"] = "50.3, 40.2, 69.7, 59.9"
    write_rows(root_copy, rows)
    dm = make_dm(root_copy)
    dm.setup()
    i = next(k for k, r in enumerate(dm.rows["val"]) if r.file_name == target["File_name"])
    sample = dm.datasets["val"][i]
    assert torch.equal(sample["hu"][0], torch.from_numpy(PATTERN[19:83, 29:93].astype(np.float32)))
    expected = (np.clip(PATTERN[19:83, 29:93], -1024, 3071) + 1024) / 4095
    assert torch.allclose(sample["image"][1], torch.from_numpy(expected).float())


def test_dicom_window_option(lesion_root):
    dm = make_dm(lesion_root, use_dicom_window=True)
    dm.setup()
    s, row = dm.datasets["test"][0], dm.rows["test"][0]
    lo, hi = row.dicom_window
    assert torch.allclose(s["image"][0], ((s["hu"][0].clamp(lo, hi) - lo) / (hi - lo)))


def test_cache_second_setup_reads_no_png(lesion_root, tmp_path, monkeypatch):
    calls = {"png": 0, "frangi": 0}
    read, filt = dl.read_hu_png, dl.frangi_vesselness

    def counting_read(path):
        calls["png"] += 1
        return read(path)

    def counting_frangi(*args, **kw):
        calls["frangi"] += 1
        return filt(*args, **kw)

    monkeypatch.setattr(dl, "read_hu_png", counting_read)
    monkeypatch.setattr(dl, "frangi_vesselness", counting_frangi)
    first = make_dm(lesion_root, cache_dir=str(tmp_path / "cache"), **FAST_FRANGI)
    first.prepare_data()
    first.setup()
    assert calls["png"] == len({r["File_name"] for r in read_rows(lesion_root)})  # each PNG once
    assert calls["frangi"] >= 1 and sorted(p.name.split("-")[1] for p in (tmp_path / "cache").iterdir()) == [
        "crops", "frangi"]
    calls.update(png=0, frangi=0)
    second = make_dm(lesion_root, cache_dir=str(tmp_path / "cache"), **FAST_FRANGI)
    second.setup()
    assert calls == {"png": 0, "frangi": 0}
    a, b = first.datasets["test"][3], second.datasets["test"][3]
    assert torch.equal(a["hu"], b["hu"]) and torch.equal(a["vesselness"], b["vesselness"])
    assert a["vesselness"].shape == (1, 64, 64) and 0 <= a["vesselness"].min() and a["vesselness"].max() <= 1
    other_window = make_dm(lesion_root, cache_dir=str(tmp_path / "cache"), window=(-160, 240), **FAST_FRANGI)
    other_window.setup()
    assert calls == {"png": 0, "frangi": 1}  # crops reused, Frangi of the new window computed


def test_synthesize_if_missing(tmp_path):
    dm = make_dm(tmp_path / "new" / "DeepLesion", synthesize_if_missing=True, phantom_patients=4)
    dm.setup()
    assert (tmp_path / "new" / "DeepLesion" / "DL_info.csv").is_file() and len(dm.datasets["test"]) > 0


# -- errors -------------------------------------------------------------------------------------------------
def test_missing_root_and_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="synthesize_if_missing.*medcbir-phantom deeplesion"):
        make_dm(tmp_path / "nowhere").setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="DL_info.csv not found"):
        make_dm(tmp_path / "empty").setup()


def test_missing_columns_are_listed(root_copy):
    columns = [c for c in REAL_COLUMNS if c not in ("Bounding_boxes", "Train_Val_Test")]
    write_rows(root_copy, read_rows(root_copy), columns)
    with pytest.raises(ValueError, match="missing column\\(s\\) Bounding_boxes, Train_Val_Test"):
        make_dm(root_copy).setup()


@pytest.mark.parametrize("column, value, message", [
    ("Bounding_boxes", "12.5, 30, 40", "line 4: Bounding_boxes = '12.5, 30, 40': expected 4"),
    ("Bounding_boxes", "a, b, c, d", "line 4: Bounding_boxes = 'a, b, c, d'"),
    ("Bounding_boxes", "50, 50, 40, 60", "x1 <= x2"),
    ("Train_Val_Test", "4", "line 4: Train_Val_Test = '4': expected 1 \\(train\\), 2 \\(val\\) or 3"),
    ("Coarse_lesion_type", "9", "line 4: Coarse_lesion_type = 9"),
])
def test_malformed_rows_name_line_and_value(root_copy, column, value, message):
    rows = read_rows(root_copy)
    rows[2][column] = value
    write_rows(root_copy, rows)
    with pytest.raises(ValueError, match=message):
        make_dm(root_copy).setup()


def test_missing_and_8_bit_pngs(root_copy):
    rows = read_rows(root_copy)
    folder, slice_png = rows[0]["File_name"].rsplit("_", 1)
    path = root_copy / "Images_png" / folder / slice_png
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(path)
    with pytest.raises(ValueError, match=f"{slice_png}: a PNG image of mode 'L'.*16-bit"):
        make_dm(root_copy).setup()
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"{folder}/{slice_png} not found.*line 2"):
        make_dm(root_copy).setup()


def test_frangi_input_feeds_vesselness_to_the_model(tmp_path):
    root = write_deeplesion_phantom(tmp_path / "DeepLesion", n_patients=6, image_size=96, seed=1)
    dm = DeepLesionDataModule(str(root), crop_size=32, frangi=True, frangi_input=True, frangi_scales=(1.0, 3.0, 1.0),
                              num_workers=0)
    dm.setup()
    sample = dm.retrieval_dataset("test")[0]
    v = sample["vesselness"][0]
    assert sample["image"].shape == (3, 32, 32)
    assert torch.allclose(sample["image"][1], v / v.max()) and sample["image"].max() == 1.0
    with pytest.raises(ValueError, match="frangi_input=true needs frangi=true"):
        DeepLesionDataModule(str(root), frangi_input=True)
