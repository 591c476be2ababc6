"""CheXpert: the parser on the real train.csv, the synthetic copy, the DataModule and its bad-input errors."""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from datamodules.chexpert import CheXpertDataModule, apply_uncertainty, read_chexpert_csv
from datamodules.synthetic.chexpert import CSV_COLUMNS, FINDINGS, write_chexpert_phantom
from tests.conftest import packaged_label_file


def real_train_csv() -> Path:
    return packaged_label_file("chexpert_train.csv.gz")


@pytest.fixture(scope="module")
def real_rows():
    return read_chexpert_csv(real_train_csv())


def test_real_train_csv_header_values_and_policies(real_rows):
    import gzip

    with gzip.open(real_train_csv(), "rt") as f:
        assert tuple(f.readline().strip().split(",")) == CSV_COLUMNS
    assert len(real_rows) == 223_414
    assert len({r.patient_id for r in real_rows}) == 64_540
    views = [r.view for r in real_rows]
    assert views.count("Frontal") == 191_027 and views.count("Lateral") == 32_387
    values = np.array([r.findings for r in real_rows])
    assert set(np.unique(values[~np.isnan(values)])) == {-1.0, 0.0, 1.0}
    effusion = values[:, FINDINGS.index("Pleural Effusion")]
    assert [(effusion == v).sum() for v in (1.0, 0.0, -1.0)] == [86_187, 35_396, 11_628]
    assert np.isnan(effusion).sum() == 90_203
    counts = {p: apply_uncertainty(real_rows, "Pleural Effusion", p) for p in ("ignore", "zeros", "ones")}
    assert len(counts["ignore"]) == 223_414 - 11_628 and sum(lab for _, lab in counts["ignore"]) == 86_187
    assert len(counts["zeros"]) == 223_414 and sum(lab for _, lab in counts["zeros"]) == 86_187
    assert sum(lab for _, lab in counts["ones"]) == 86_187 + 11_628
    frontal_ap = [r for r in real_rows if r.view == "Frontal" and r.projection == "AP"]
    assert len(frontal_ap) == 161_590


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cx") / "CheXpert-v1.0-small"
    return write_chexpert_phantom(root, n_train_patients=20, n_valid_patients=40, image_shape=(40, 36), seed=0)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_phantom_layout_is_real_and_deterministic(small_root, tmp_path):
    again = write_chexpert_phantom(tmp_path / "CheXpert-v1.0-small", 20, 40, (40, 36), seed=0)
    assert _digest(again) == _digest(small_root)
    rows = read_chexpert_csv(small_root / "train.csv")
    assert all(r.path.startswith("CheXpert-v1.0-small/train/patient") for r in rows)
    assert (small_root.parent / rows[0].path).is_file()
    assert len({r.patient_id for r in rows}) == 20 and len(rows) > 40          # several studies per patient
    valid = np.array([r.findings for r in read_chexpert_csv(small_root / "valid.csv")])
    assert set(np.unique(valid)) <= {0.0, 1.0}                                   # valid.csv: 0 / 1 only
    effusion = np.array([r.finding("Pleural Effusion") for r in rows])
    assert (effusion == -1.0).any() and np.isnan(effusion).any() and (effusion == 1.0).any()


def test_datamodule_splits_are_patient_disjoint(small_root, one_thread):
    dm = CheXpertDataModule(str(small_root), image_size=32, projections=None, val_fraction=0.25, num_workers=0)
    dm.setup()
    patients = {s: {int(x["patient_id"]) for x in dm.retrieval_dataset(s)} for s in ("train", "val", "test")}
    assert not patients["train"] & patients["val"] and not (patients["train"] | patients["val"]) & patients["test"]
    sample = dm.retrieval_dataset("test")[0]
    assert sample["image"].shape == (3, 32, 32) and 0 <= float(sample["image"].min()) <= float(sample["image"].max())
    assert float(sample["image"].max()) <= 1
    assert int(sample["label"]) in (0, 1) and sample["findings"].shape == (14,)
    assert all(r.view == "Frontal" for r in dm.rows["train"])
    assert dm.paths("test")[0].startswith("CheXpert-v1.0-small/valid/")
    zeros = CheXpertDataModule(str(small_root), image_size=32, projections=None, val_fraction=0.25,
                               uncertainty="zeros", num_workers=0)
    assert len(zeros.split_rows()["train"]) > len(dm.split_rows()["train"])     # uncertain rows kept as 0


def _copy(root: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "CheXpert-v1.0-small"
    shutil.copytree(root, dst)
    return dst


def _edit_first_path(root: Path, new_path: str) -> str:
    lines = (root / "valid.csv").read_text().splitlines()
    old = lines[1].split(",")[0]
    lines[1] = lines[1].replace(old, new_path, 1)
    (root / "valid.csv").write_text("\n".join(lines) + "\n")
    return old


def _build(root: Path, **kw):
    CheXpertDataModule(str(root), image_size=32, projections=None, num_workers=0, **kw).setup()


def test_path_escaping_the_data_root_is_one_clear_error(small_root, tmp_path):
    root = _copy(small_root, tmp_path)
    _edit_first_path(root, "../../elsewhere/patient00001/study1/view1_frontal.jpg")
    with pytest.raises(ValueError, match=r"outside data_root.*line 2|line 2.*outside data_root"):
        _build(root)


def test_missing_jpeg_is_one_clear_error(small_root, tmp_path):
    root = _copy(small_root, tmp_path)
    old = _edit_first_path(root, "CheXpert-v1.0-small/valid/patient99999/study1/view1_frontal.jpg")
    assert old
    with pytest.raises(FileNotFoundError, match=r"patient99999.*not found \(line 2 of valid.csv\)"):
        _build(root)


def test_unreadable_jpeg_is_one_clear_error(small_root, tmp_path):
    root = _copy(small_root, tmp_path)
    first = (root / "valid.csv").read_text().splitlines()[1].split(",")[0]
    (root.parent / first).write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"view1_frontal.jpg \(line 2 of valid.csv\): unreadable image"):
        _build(root)


@pytest.mark.parametrize("key, value, match", [("target", "Effusion", "unknown finding.*Pleural Effusion"),
                                               ("uncertainty", "U-Ones", "expected one of ignore, zeros, ones")])
def test_bad_keys_are_clear_errors(key, value, match, small_root):
    with pytest.raises(ValueError, match=match):
        CheXpertDataModule(str(small_root), **{key: value})


def test_bad_label_value_names_line_and_column(small_root, tmp_path):
    root = _copy(small_root, tmp_path)
    lines = (root / "train.csv").read_text().splitlines()
    cells = lines[1].split(",")
    cells[CSV_COLUMNS.index("Edema")] = "2.0"
    lines[1] = ",".join(cells)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train.csv line 2: Edema = '2.0'"):
        read_chexpert_csv(root / "train.csv")


def test_missing_root_names_the_phantom_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="datamodules.synthetic.chexpert"):
        _build(tmp_path / "nowhere" / "CheXpert-v1.0-small")
    assert not os.path.exists(tmp_path / "nowhere")
