"""ChestX-ray14: the Data_Entry parser on the real label file, the phantom, the DataModule, bad input."""
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.balanced_sampling import ClassBalancedBatchSampler, rarest_label_classes
from datamodules.chestxray14 import LABELS, ChestXray14DataModule, expand_header, read_data_entry, read_xray_png
from datamodules.synthetic.chestxray14 import (
    REAL_PREVALENCE,
    REAL_ROWS,
    combination_probabilities,
    write_chestxray14_phantom,
)
from datamodules.transforms.xray import invert_xray
from tests.conftest import packaged_label_file


def real_csv() -> Path:
    return packaged_label_file("Data_Entry_2017_v2020.csv.gz")


@pytest.fixture(scope="module")
def real_rows():
    return read_data_entry(real_csv())


@pytest.fixture(scope="module")
def xray_root(tmp_path_factory) -> Path:
    return write_chestxray14_phantom(tmp_path_factory.mktemp("cx") / "ChestX-ray14", n_patients=40, image_size=64)


def test_real_label_file(real_rows):
    assert len(real_rows) == REAL_ROWS == 112_120
    labels = np.array([r.labels for r in real_rows])
    assert labels.shape[1] == len(LABELS) == 15 and labels.any(1).all()
    assert dict(zip(LABELS, labels.sum(0).tolist())) == REAL_PREVALENCE   # e.g. Hernia 227, No Finding 60,361
    assert len({r.patient_id for r in real_rows}) == 30_805
    assert {r.view for r in real_rows} == {"PA", "AP"}
    first = real_rows[1]
    assert (first.image, first.follow_up, first.patient_id) == ("00000001_001.png", 1, 1)
    assert [n for n, b in zip(LABELS, first.labels) if b] == ["Cardiomegaly", "Emphysema"]


def test_real_file_2017_variant_and_official_style_lists(real_rows, tmp_path):
    """The 2017 release (trailing empty column) parses identically; lists built from the real file by patient
    give patient-disjoint train / val / test splits."""
    with gzip.open(real_csv(), "rt") as f:
        lines = [next(f) for _ in range(3001)]
    (tmp_path / "Data_Entry_2017.csv").write_text("".join(line.rstrip("\n") + ",\n" for line in lines))
    assert expand_header(lines[0].rstrip("\n").split(",") + [""])[-4:] == [
        "OriginalImageWidth", "OriginalImageHeight", "OriginalImagePixelSpacingx", "OriginalImagePixelSpacingy"]
    assert read_data_entry(tmp_path / "Data_Entry_2017.csv") == real_rows[:3000]
    rows = real_rows[:3000]
    test = [r.image for r in rows if r.patient_id % 4 == 0]
    (tmp_path / "test_list.txt").write_text("\n".join(test) + "\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(r.image for r in rows if r.patient_id % 4) + "\n")
    splits = ChestXray14DataModule(str(tmp_path)).split_rows()
    patients = {s: {r.patient_id for r in v} for s, v in splits.items()}
    assert not patients["train"] & patients["val"]
    assert not ((patients["train"] | patients["val"]) & patients["test"])
    assert sum(len(v) for v in splits.values()) == 3000
    assert 0.15 < len(patients["val"]) / (len(patients["train"]) + len(patients["val"])) < 0.25
    pa = ChestXray14DataModule(str(tmp_path), view_positions=["PA"]).split_rows()
    assert all(r.view == "PA" for v in pa.values() for r in v)


def test_phantom_fits_real_prevalence_and_is_deterministic(xray_root, tmp_path):
    names, probs = combination_probabilities()
    marginal = {lab: sum(p for n, p in zip(names, probs) if lab in n.split("|")) for lab in LABELS}
    for lab, count in REAL_PREVALENCE.items():
        assert abs(marginal[lab] - count / REAL_ROWS) < 0.03, lab
    again = write_chestxray14_phantom(tmp_path / "again", n_patients=40, image_size=64)
    files = sorted(p.relative_to(xray_root) for p in xray_root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((xray_root / f).read_bytes() == (again / f).read_bytes() for f in files)
    rows = read_data_entry(xray_root / "Data_Entry_2017_v2020.csv")
    per_patient = np.bincount([r.patient_id for r in rows])
    assert per_patient.max() >= 3 and {"images_001", "images_002"} <= {p.name for p in xray_root.iterdir()}
    with Image.open(next(xray_root.glob("images_001/images/*.png"))) as img:
        assert img.mode == "L" and img.size == (64, 64)


def test_datamodule_splits_labels_and_inversion(xray_root, tmp_path):
    dm = ChestXray14DataModule(str(xray_root), image_size=32, num_workers=0, cache_dir=str(tmp_path / "c"))
    dm.setup()
    ds = dm.datasets
    patients = {s: set(ds[s].patients.tolist()) for s in ds}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    sample = ds["test"][0]
    assert sample["image"].shape == (3, 32, 32) and sample["label"].shape == (15,)
    raw = read_xray_png(next(xray_root.rglob(ds["test"].names[0])), 32)
    assert torch.equal(sample["image"][0], invert_xray(torch.from_numpy(raw)))
    x = torch.tensor([[0.0, 50.0], [100.0, 200.0]])
    assert torch.equal(invert_xray(x), torch.round(255 * (1 - x / 200)) / 255)   # eq. 2
    assert list((tmp_path / "c").glob("chestxray14-*.npz"))                       # decoded images cached


def test_sixteen_bit_and_rgba_pngs_are_converted(tmp_path):
    grey = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "l.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "i16.png")
    Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 255)])).save(tmp_path / "rgba.png")
    ref = invert_xray(torch.from_numpy(read_xray_png(tmp_path / "l.png", 32)))
    for name in ("i16.png", "rgba.png"):   # equal after eq. 2 (which min-max normalises), up to rounding
        out = invert_xray(torch.from_numpy(read_xray_png(tmp_path / name, 32)))
        assert (out - ref).abs().max() <= 4 / 255, name  # two 8-bit roundings
    Image.fromarray(grey > 100).save(tmp_path / "bw.png")
    with pytest.raises(ValueError, match=r"bw.png: PNG mode '1'"):
        read_xray_png(tmp_path / "bw.png", 32)


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def test_bad_csv_and_lists(xray_root, tmp_path):
    root = _copy(xray_root, tmp_path)
    csv = root / "Data_Entry_2017_v2020.csv"
    text = csv.read_text()
    csv.write_text(text.replace("Finding Labels", "Findings", 1))
    with pytest.raises(ValueError, match="missing column.*'Finding Labels'"):
        read_data_entry(csv)
    lines = text.splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[1], "Pneumonitis", 1)
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 4: Finding Labels.*'Pneumonitis'"):
        read_data_entry(csv)
    csv.write_text(text)
    (root / "test_list.txt").write_text((root / "test_list.txt").read_text() + "99999999_000.png\n")
    with pytest.raises(ValueError, match="test_list.txt: 1 image.*'99999999_000.png'"):
        ChestXray14DataModule(str(root)).split_rows()


def test_listed_image_missing(xray_root, tmp_path):
    root = _copy(xray_root, tmp_path)
    victim = next(root.glob("images_002/images/*.png"))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=f"image {victim.name} .*not found"):
        ChestXray14DataModule(str(root), image_size=32, num_workers=0).setup()


def test_class_balanced_batches_seeded_resumable_and_sharded():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 15)) < np.r_[np.full(14, 0.08), 0.5]).astype(np.float32)
    classes = rarest_label_classes(labels)
    assert all(labels[i, classes[i]] for i in range(300) if labels[i].any())
    sampler = ClassBalancedBatchSampler(classes, 20, 3, seed=4)
    batches = [[i for _, i in b] for b in sampler]
    assert len(batches) == len(sampler) == 15
    for b in batches:
        assert len(b) == 20 and len(set(b)) == 20 and np.bincount(classes[b]).max() <= 3
    assert batches == [[i for _, i in b] for b in ClassBalancedBatchSampler(classes, 20, 3, seed=4)]
    sampler.skip_samples = 6                          # resume after 6 finished batches
    assert [[i for _, i in b] for b in sampler] == batches[6:]
    sampler.set_epoch(1)
    assert [[i for _, i in b] for b in sampler] != batches
    ranks = [list(ClassBalancedBatchSampler(classes, 20, 3, seed=4, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 7
    assert [[i for _, i in b] for b in ranks[0]] == batches[0:14:2]
