"""NIH ChestX-ray14 (Wang et al. 2017; the attention-hashing paper's "ChestX-ray8") for X-ray retrieval.

Layout read unchanged: ``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv`` (Image Index, Finding
Labels ``A|B`` or ``No Finding``, Follow-up #, Patient ID, Patient Age, Patient Gender, View Position,
``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]``: bracketed headers span two data
columns; the 2017 file ends every line with an empty column), the PNGs in ``images/`` or
``images_001/images/`` ... ``images_012/images/``, and the official patient-disjoint ``train_val_list.txt``
/ ``test_list.txt``. Labels are multi-hot over the 14 findings + "No Finding" (15 columns, ``LABELS``).
"""
from __future__ import annotations

import csv
import gzip
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datamodules.balanced_sampling import BatchKeysDataset, ClassBalancedBatchSampler, rarest_label_classes
from datamodules.base import RetrievalDataModule
from datamodules.cache import cache_key, ensure_data_root, file_stats, npz_cached, write_phantom_atomic
from datamodules.sampling import ResumableDataLoader
from datamodules.transforms.xray import XrayInversiond

log = logging.getLogger(__name__)
CACHE_VERSION = 1
FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"
LABELS = FINDINGS + (NO_FINDING,)
CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
LIST_FILES = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position")
VIEWS = ("PA", "AP")
FILES_PER_SHARD = 512
PHANTOM_COMMAND = "python -m datamodules.synthetic.chestxray14 --root {root}"
SAMPLERS = ("class_balanced", "shuffle")
_GREY16 = ("I;16", "I;16B", "I;16L", "I")
_COLOUR = ("RGB", "RGBA", "LA")

__all__ = ["ChestXray14DataModule", "FINDINGS", "LABELS", "XrayRow", "find_images", "read_data_entry",
           "read_image_list", "read_xray_png", "split_train_val"]


@dataclass(frozen=True)
class XrayRow:
    """One Data_Entry row: file name, multi-hot labels (``LABELS`` order), follow-up, patient, view, CSV line."""

    image: str
    labels: tuple[int, ...]
    follow_up: int
    patient_id: int
    view: str
    line: int


def expand_header(fields: list[str]) -> list[str]:
    """Column names of a Data_Entry header: ``OriginalImage[Width,Height]`` (two CSV fields
    ``OriginalImage[Width`` + ``Height]``, or one quoted field) -> ``OriginalImageWidth``,
    ``OriginalImageHeight``; trailing empty columns dropped."""
    fields = [f.strip() for f in fields]
    while fields and fields[-1] == "":
        fields.pop()
    out, i = [], 0
    while i < len(fields):
        name = fields[i]
        if "[" in name and "]" not in name and i + 1 < len(fields) and fields[i + 1].endswith("]"):
            base, first = name.split("[", 1)
            out += [base + first.strip(), base + fields[i + 1][:-1].strip()]
            i += 2
            continue
        quoted = re.fullmatch(r"(.*)\[(.*,.*)\]", name)
        out += [quoted.group(1) + p.strip() for p in quoted.group(2).split(",")] if quoted else [name]
        i += 1
    return out


def _labels(path: Path, line: int, text: str) -> tuple[int, ...]:
    names = [t.strip() for t in text.split("|") if t.strip()]
    unknown = [n for n in names if n not in LABELS]
    if not names or unknown:
        raise ValueError(f"{path} line {line}: Finding Labels = {text!r}: unknown finding "
                         f"{unknown[0] if unknown else '(empty)'!r}; expected '|'-separated names from "
                         f"{', '.join(LABELS)}")
    if NO_FINDING in names and len(names) > 1:
        raise ValueError(f"{path} line {line}: Finding Labels = {text!r}: 'No Finding' combined with findings")
    return tuple(int(n in names) for n in LABELS)


def _int(path: Path, line: int, column: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{path} line {line}: {column} = {text!r}: expected an integer") from None


def data_entry_csv(root: Path) -> Path:
    """``root/Data_Entry_2017_v2020.csv`` or ``root/Data_Entry_2017.csv`` (the first that exists)."""
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"no {' or '.join(CSV_NAMES)} in {root}: expected the ChestX-ray14 layout "
                            f"(label CSV, images_*/images/*.png, train_val_list.txt, test_list.txt)")


def read_data_entry(path: str | Path) -> list[XrayRow]:
    """Parse a Data_Entry CSV (either release, plain or .gz): one :class:`XrayRow` per image, checked."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = expand_header(next(reader, []))
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(map(repr, missing))} in the header; a "
                             f"ChestX-ray14 Data_Entry CSV has {', '.join(REQUIRED_COLUMNS)}, ...")
        col = {c: header.index(c) for c in REQUIRED_COLUMNS}
        rows, seen = [], set()
        for line, rec in enumerate(reader, start=2):
            while len(rec) > len(header) and rec[-1].strip() == "":
                rec.pop()
            if not rec:
                continue
            if len(rec) != len(header):
                raise ValueError(f"{path} line {line}: {len(rec)} columns, the header has {len(header)}")
            name = rec[col["Image Index"]].strip()
            if name in seen:
                raise ValueError(f"{path} line {line}: Image Index {name!r} appears twice")
            seen.add(name)
            view = rec[col["View Position"]].strip()
            rows.append(XrayRow(name, _labels(path, line, rec[col["Finding Labels"]]),
                                _int(path, line, "Follow-up #", rec[col["Follow-up #"]]),
                                _int(path, line, "Patient ID", rec[col["Patient ID"]]), view, line))
    return rows


def read_image_list(path: Path) -> list[str]:
    """Image names of a list file (one per line, blank lines ignored)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: ChestX-ray14 needs the official {LIST_FILES['train_val']} "
                                f"and {LIST_FILES['test']} next to the label CSV")
    return [t.strip() for t in path.read_text().splitlines() if t.strip()]


def find_images(root: Path) -> dict[str, Path]:
    """File name -> path of every PNG in ``root/images/`` and ``root/images_*/images/``."""
    found: dict[str, Path] = {}
    for folder in [root / "images", *sorted(root.glob("images_*/images"))]:
        if folder.is_dir():
            for p in sorted(folder.glob("*.png")):
                found.setdefault(p.name, p)
    return found


def split_train_val(patients: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Bool mask of the validation rows: a seeded ``val_fraction`` of the patients (patient-disjoint)."""
    unique = np.unique(patients)
    n_val = int(round(val_fraction * len(unique)))
    val = np.random.default_rng(seed).permutation(unique)[:n_val]
    return np.isin(patients, val)


def read_xray_png(path: Path, size: int) -> np.ndarray:
    """Decode a radiograph to uint8 grey [size, size] (PIL bilinear with anti-aliasing).

    8-bit grey is read as is. Accepted and converted: 16-bit grey (min-max scaled to 8 bits; eq. 2
    normalises the range anyway), RGB / RGBA / LA (alpha dropped, colour to luma; some real ChestX-ray14
    PNGs are RGBA). Any other mode is an error naming the file.
    """
    with Image.open(path) as img:
        if img.format != "PNG":
            raise ValueError(f"{path}: a {img.format} file; ChestX-ray14 images are PNG")
        if img.mode in _GREY16:
            a = np.asarray(img).astype(np.float64)
            lo, hi = a.min(), a.max()
            a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
            grey = Image.fromarray(np.round(a).astype(np.uint8))
        elif img.mode in _COLOUR:
            grey = img.convert("RGB").convert("L") if img.mode != "LA" else img.getchannel(0)
        elif img.mode == "L":
            grey = img.copy()
        else:
            raise ValueError(f"{path}: PNG mode {img.mode!r}; expected 8-bit grey ('L'), 16-bit grey "
                             f"('I;16', converted) or RGB/RGBA/LA (converted to grey)")
    return np.asarray(grey.resize((size, size), Image.BILINEAR), dtype=np.uint8)


class XrayDataset(Dataset):
    """Evaluation samples of one split: ``image`` (eq. 2 inversion, 3 channels, float [0, 1]), ``label``
    (multi-hot float [15]), ``patient_id``, ``follow_up``, ``index``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, patients: np.ndarray, follow_ups: np.ndarray,
                 names: list[str], channels: int = 3):
        self.images, self.labels, self.patients, self.follow_ups = images, labels, patients, follow_ups
        self.names = names
        self.transform = XrayInversiond("image", channels=channels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return self.transform({"image": torch.from_numpy(self.images[i])[None],
                               "label": torch.from_numpy(self.labels[i]),
                               "patient_id": torch.tensor(int(self.patients[i])),
                               "follow_up": torch.tensor(int(self.follow_ups[i])), "index": torch.tensor(i)})


class ChestXray14DataModule(RetrievalDataModule):
    """ChestX-ray14 for retrieval (Öztürk et al. 2021): official lists, train/val by patient inside train_val.

    Splits: ``test`` = ``test_list.txt``; ``train`` / ``val`` = ``train_val_list.txt`` split by patient
    (``val_fraction`` of its patients, seeded by ``split_seed``). Every list entry must be in the CSV and on
    disk. ``view_positions`` keeps only those views (e.g. ``[PA]``); None = all.

    Images are decoded once to ``image_size`` (uint8), in shards of PNGs; with ``cache_dir`` each shard is
    stored (keyed by paths, sizes, mtimes and size; written atomically), so later runs decode nothing.

    Training batches: ``sampler: class_balanced`` (the paper: ``batch_size`` 20, at most ``per_class`` 3 per
    class, :mod:`datamodules.balanced_sampling`) or ``shuffle`` (the base class's shuffled epochs). Both are
    seeded and resume exactly mid-epoch.
    """

    def __init__(self, data_root: str, image_size: int = 224, val_fraction: float = 0.2, split_seed: int = 0,
                 view_positions: list[str] | None = None, sampler: str = "class_balanced", per_class: int = 3,
                 cache_dir: str | None = None, synthesize_if_missing: bool = False, phantom_patients: int = 150,
                 phantom_image_size: int = 128, batch_size: int = 20, num_workers: int = 2,
                 predict_split: str = "test", train_views=None, seed: int | None = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, predict_split=predict_split,
                         train_views=train_views, seed=seed)
        if int(image_size) < 16:
            raise ValueError(f"image_size={image_size}: expected an integer >= 16")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction={val_fraction}: expected a fraction strictly between 0 and 1")
        bad = [v for v in (view_positions or []) if v not in VIEWS]
        if bad:
            raise ValueError(f"view_positions={view_positions}: unknown {bad}; ChestX-ray14 has {VIEWS}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r}: expected one of {SAMPLERS}")
        if int(phantom_patients) < 6:
            raise ValueError(f"phantom_patients={phantom_patients}: expected >= 6 (train, val and test)")
        self.save_hyperparameters(ignore=["train_views"])
        self.data_root = Path(data_root)
        self.image_size = int(image_size)
        self.val_fraction, self.split_seed = float(val_fraction), int(split_seed)
        self.view_positions = list(view_positions) if view_positions else None
        self.sampler, self.per_class = sampler, int(per_class)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.synthesize_if_missing = bool(synthesize_if_missing)
        self.phantom_patients, self.phantom_image_size = int(phantom_patients), int(phantom_image_size)
        self.names: dict[str, list[str]] = {}

    # -- files ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Write the phantom when needed; with ``cache_dir`` fill the image cache here (one process)."""
        split_rows = self.split_rows()
        if self.cache_dir is not None:
            self.decode([r for rows in split_rows.values() for r in rows])

    def _write_phantom(self) -> None:
        from datamodules.synthetic.chestxray14 import write_chestxray14_phantom

        write_phantom_atomic(self.data_root, partial(write_chestxray14_phantom, n_patients=self.phantom_patients,
                                                     image_size=self.phantom_image_size),
                             f"ChestX-ray14 phantom ({self.phantom_patients} patients)", "ChestX-ray14", log)

    def split_rows(self) -> dict[str, list[XrayRow]]:
        """CSV rows of train / val / test (list files resolved, views filtered, patient-disjoint checked)."""
        ensure_data_root(self.data_root, self.synthesize_if_missing, self._write_phantom,
                         "the ChestX-ray14 folder (Data_Entry_2017*.csv, images*/, list files)",
                         PHANTOM_COMMAND.format(root=self.data_root))
        csv_path = data_entry_csv(self.data_root)
        by_name = {r.image: r for r in read_data_entry(csv_path)}
        lists = {}
        for split, file in LIST_FILES.items():
            path = self.data_root / file
            names = read_image_list(path)
            unknown = [n for n in names if n not in by_name]
            if unknown:
                raise ValueError(f"{path}: {len(unknown)} image(s) not in {csv_path.name}, e.g. {unknown[0]!r}")
            lists[split] = [by_name[n] for n in names
                            if self.view_positions is None or by_name[n].view in self.view_positions]
        shared = {r.patient_id for r in lists["train_val"]} & {r.patient_id for r in lists["test"]}
        if shared:
            raise ValueError(f"{LIST_FILES['train_val']} and {LIST_FILES['test']} share {len(shared)} patient(s), "
                             f"e.g. Patient ID {min(shared)}; the official lists are patient-disjoint")
        train_val = lists["train_val"]
        is_val = split_train_val(np.array([r.patient_id for r in train_val], np.int64), self.val_fraction,
                                 self.split_seed)
        out = {"train": [r for r, v in zip(train_val, is_val) if not v],
               "val": [r for r, v in zip(train_val, is_val) if v], "test": lists["test"]}
        for split, rows in out.items():
            if not rows:
                raise ValueError(f"ChestX-ray14 {split} split is empty (view_positions={self.view_positions}, "
                                 f"val_fraction={self.val_fraction}) in {self.data_root}")
        return out

    # -- decoding ---------------------------------------------------------------------------------
    def _paths(self, rows: list[XrayRow]) -> list[Path]:
        found = find_images(self.data_root)
        missing = [r for r in rows if r.image not in found]
        if missing:
            raise FileNotFoundError(f"image {missing[0].image} (line {missing[0].line} of the label CSV, listed "
                                    f"in {LIST_FILES['train_val']}/{LIST_FILES['test']}) not found in "
                                    f"{self.data_root}/images/ or images_*/images/ ({len(missing)} missing)")
        return [found[r.image] for r in rows]

    def _decode_shard(self, paths: list[Path]) -> np.ndarray:
        def compute():
            return {"images": np.stack([read_xray_png(p, self.image_size) for p in paths])}
        file = None
        if self.cache_dir is not None:
            key = cache_key(CACHE_VERSION, self.image_size, file_stats(paths), length=20)
            file = self.cache_dir / f"chestxray14-{key}.npz"
        return npz_cached(file, compute, shapes={"images": (len(paths), self.image_size, self.image_size)},
                          logger=log)["images"]

    def decode(self, rows: list[XrayRow]) -> np.ndarray:
        """uint8 images [n, S, S] of ``rows`` (each PNG decoded once, shards in threads, cached)."""
        paths = self._paths(rows)
        shards = [paths[k:k + FILES_PER_SHARD] for k in range(0, len(paths), FILES_PER_SHARD)]
        with ThreadPoolExecutor(max(1, min(self.num_workers, 8, len(shards)))) as pool:
            parts = list(pool.map(self._decode_shard, shards))
        return np.concatenate(parts) if parts else np.zeros((0, self.image_size, self.image_size), np.uint8)

    def build_datasets(self) -> dict[str, XrayDataset]:
        datasets = {}
        for split, rows in self.split_rows().items():
            labels = np.array([r.labels for r in rows], np.float32)
            datasets[split] = XrayDataset(self.decode(rows), labels, np.array([r.patient_id for r in rows]),
                                          np.array([r.follow_up for r in rows]), [r.image for r in rows])
            self.names[split] = [r.image for r in rows]
            log.info("ChestX-ray14 %s: %d images of %d patients; per label %s", split, len(rows),
                     len({r.patient_id for r in rows}), dict(zip(LABELS, labels.sum(0).astype(int).tolist())))
        return datasets

    # -- training order ---------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.sampler == "shuffle":
            return super().train_dataloader()
        ds = self._views_dataset("train")
        classes = rarest_label_classes(self.retrieval_dataset("train").labels)
        sampler = ClassBalancedBatchSampler(classes, self.batch_size, self.per_class, seed=self.run_seed)
        return ResumableDataLoader(BatchKeysDataset(ds), batch_size=None, sampler=sampler,
                                   batches_done=self._batches_done, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0)
