"""NIH DeepLesion (Yan et al. 2018) lesion crops for lesion search (Qi, Cheng, Haehn 2023).

Layout read unchanged: ``DL_info.csv`` (one row per lesion: File_name, Patient_index, Study_index,
Bounding_boxes "x1, y1, x2, y2" in pixels, Coarse_lesion_type 1..8 or -1 = unlabelled, Train_Val_Test
1 / 2 / 3, DICOM_windows, ...) and the key slices ``Images_png/<patient>_<study>_<series>/<slice>.png``:
16-bit grey PNGs with value = HU + 32768 (read as integers, never through 8 bits).
"""
from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import Dataset as MonaiDataset
from PIL import Image

from datamodules.base import RetrievalDataModule
from datamodules.cache import cache_key, ensure_data_root, file_stats, npz_cached, write_phantom_atomic
from datamodules.synthetic.deeplesion import DL_INFO_COLUMNS, HU_OFFSET, LESION_TYPES
from datamodules.transforms.frangi import frangi_sigmas, frangi_vesselness
from datamodules.transforms.hounsfield import HounsfieldWindowd, check_window, hounsfield_window

log = logging.getLogger(__name__)
CACHE_VERSION = 1
AIR_HU = -1024.0  # fill outside the image when a crop window is larger than the image
FULL_WINDOW = (-1024.0, 3071.0)  # the 12-bit CT range: lungs, soft tissue and bone in one window
SPLIT_CODES = {"1": "train", "2": "val", "3": "test"}
SPLITS = tuple(SPLIT_CODES.values())
FILES_PER_SHARD = 256  # PNGs decoded and cached together
PHANTOM_COMMAND = "medcbir-phantom deeplesion --root {root}"
_FILE_NAME = re.compile(r"^(\d+_\d+_\d+)_(\d+)\.png$")

__all__ = ["DeepLesionDataModule", "LesionRow", "LESION_TYPES", "box_in_crop", "crop_window", "lesion_crop",
           "read_dl_info", "read_hu_png"]


@dataclass(frozen=True)
class LesionRow:
    """The fields of one DL_info.csv row that the crops, labels and splits need (``line``: CSV line)."""

    line: int
    file_name: str
    patient_id: int
    study_id: int
    box: tuple[float, float, float, float]
    lesion_type: int
    split: str
    dicom_window: tuple[float, float]
    image_size: tuple[int, int]
    diameters: tuple[float, float]
    spacing_mm: float = 0.0  # in-plane pixel spacing (Spacing_mm_px_)

    def png(self, root: Path) -> Path:
        """``000001_01_01_109.png`` -> ``root/Images_png/000001_01_01/109.png``."""
        folder, slice_name = self.file_name.rsplit("_", 1)
        return root / "Images_png" / folder / slice_name


def _numbers(csv_path: Path, line: int, column: str, text: str, count: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{csv_path} line {line}: {column} = {text!r}: expected {count} comma-separated "
                         f"numbers ({what})")
    return values


def _integer(csv_path: Path, line: int, column: str, text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        raise ValueError(f"{csv_path} line {line}: {column} = {text!r}: expected an integer") from None


def read_dl_info(root: Path) -> list[LesionRow]:
    """Parse ``root/DL_info.csv`` (all columns of the real file must be there), checking each used field."""
    csv_path = root / "DL_info.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found: expected the DeepLesion layout (DL_info.csv and "
                                f"Images_png/) under data_root={root}")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in DL_INFO_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)}; a DeepLesion DL_info.csv "
                             f"has {', '.join(DL_INFO_COLUMNS)}")
        reader.fieldnames = header
        rows = []
        for i, rec in enumerate(reader):
            line = i + 2
            name = (rec["File_name"] or "").strip()
            if not _FILE_NAME.match(name):
                raise ValueError(f"{csv_path} line {line}: File_name = {name!r}: expected "
                                 f"<patient>_<study>_<series>_<slice>.png like 000001_01_01_109.png")
            box = _numbers(csv_path, line, "Bounding_boxes", rec["Bounding_boxes"], 4, "x1, y1, x2, y2")
            if box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f"{csv_path} line {line}: Bounding_boxes = {rec['Bounding_boxes']!r}: "
                                 f"expected x1 <= x2 and y1 <= y2")
            code = (rec["Train_Val_Test"] or "").strip()
            code = code[:-2] if code.endswith(".0") else code
            if code not in SPLIT_CODES:
                raise ValueError(f"{csv_path} line {line}: Train_Val_Test = {rec['Train_Val_Test']!r}: "
                                 f"expected 1 (train), 2 (val) or 3 (test)")
            kind = _integer(csv_path, line, "Coarse_lesion_type", rec["Coarse_lesion_type"])
            if kind != -1 and kind not in LESION_TYPES:
                raise ValueError(f"{csv_path} line {line}: Coarse_lesion_type = {kind}: expected 1..8 or -1")
            size = _numbers(csv_path, line, "Image_size", rec["Image_size"], 2, "height, width")
            rows.append(LesionRow(
                line, name, _integer(csv_path, line, "Patient_index", rec["Patient_index"]),
                _integer(csv_path, line, "Study_index", rec["Study_index"]), box, kind, SPLIT_CODES[code],
                _numbers(csv_path, line, "DICOM_windows", rec["DICOM_windows"], 2, "low, high HU"),
                (int(size[0]), int(size[1])),
                _numbers(csv_path, line, "Lesion_diameters_Pixel_", rec["Lesion_diameters_Pixel_"], 2,
                         "long, short"),
                _numbers(csv_path, line, "Spacing_mm_px_", rec["Spacing_mm_px_"], 3, "x, y, z in mm")[0]))
    return rows


def read_hu_png(path: Path) -> np.ndarray:
    """Decode a DeepLesion slice: 16-bit grey PNG -> int32 HU (value - 32768). Raises on other PNG modes."""
    with Image.open(path) as img:
        if img.format != "PNG" or img.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise ValueError(f"{path}: a {img.format} image of mode {img.mode!r}; DeepLesion slices are "
                             f"16-bit grey PNGs (mode 'I;16', value = HU + 32768): 8-bit or RGB copies lose "
                             f"the HU values, use the original Images_png")
        return np.asarray(img).astype(np.int32) - HU_OFFSET


def crop_window(box: Sequence[float], shape: tuple[int, int], crop_size: int,
                window: int | None = None) -> tuple[np.ndarray, int]:
    """``(start [x, y], side)`` of the square window :func:`lesion_crop` cuts from an image of ``shape`` (h, w):
    the box extended symmetrically to ``window`` pixels (default ``crop_size``), or the whole box when larger."""
    x1, y1, x2, y2 = (float(v) for v in box)
    h, w = shape
    lo = np.floor([x1, y1]).astype(int)
    hi = np.ceil([x2, y2]).astype(int)
    side = int(max(window or crop_size, *(hi - lo + 1)))
    start = np.floor(np.array([x1 + x2, y1 + y2]) / 2 - (side - 1) / 2 + 0.5).astype(int)
    start = np.clip(start, hi - side + 1, lo)  # the box's pixels stay inside the window
    for axis, size in enumerate((w, h)):  # shift inside the image when it is large enough
        if size >= side:
            start[axis] = min(max(start[axis], 0), size - side)
    return start, side


def box_in_crop(box: Sequence[float], shape: tuple[int, int], crop_size: int,
                window: int | None = None) -> np.ndarray:
    """The lesion box in the crop's pixel-edge coordinates ``[x1, y1, x2, y2]`` (pixel i spans [i, i + 1]),
    for drawing it on the crop."""
    start, side = crop_window(box, shape, crop_size, window)
    x1, y1, x2, y2 = (float(v) for v in box)
    scale = crop_size / side
    return np.array([(x1 - start[0]) * scale, (y1 - start[1]) * scale, (x2 + 1 - start[0]) * scale,
                     (y2 + 1 - start[1]) * scale], np.float32)


def lesion_crop(hu: np.ndarray, box: Sequence[float], crop_size: int, fill: float = AIR_HU,
                window: int | None = None) -> np.ndarray:
    """Square float32 HU crop [crop_size, crop_size] around a lesion box ``(x1, y1, x2, y2)`` (Qi et al.).

    The window is the box extended symmetrically to ``window`` pixels (default ``crop_size``), or the whole
    box when larger (its longer side, so the aspect is kept), shifted to lie inside the image (padded with
    ``fill`` only where the image is smaller than the window), then area-resized to ``crop_size`` when
    larger (bilinear when smaller).
    """
    h, w = hu.shape
    start, side = crop_window(box, (h, w), crop_size, window)
    out = np.full((side, side), fill, np.float32)
    (cx, cy), (ex, ey) = start, start + side
    src = hu[max(cy, 0):min(ey, h), max(cx, 0):min(ex, w)]
    out[max(cy, 0) - cy:max(cy, 0) - cy + src.shape[0], max(cx, 0) - cx:max(cx, 0) - cx + src.shape[1]] = src
    if side > crop_size:
        out = F.adaptive_avg_pool2d(torch.from_numpy(out)[None], crop_size)[0].numpy()  # "area" resize
    elif side < crop_size:
        out = F.interpolate(torch.from_numpy(out)[None, None], size=(crop_size, crop_size), mode="bilinear",
                            align_corners=False)[0, 0].numpy()
    return out


class DeepLesionDataModule(RetrievalDataModule):
    """DeepLesion lesion ROIs (Qi, Cheng, Haehn 2023): crops around each Bounding_boxes, by Train_Val_Test.

    Each lesion gives a ``crop_size`` x ``crop_size`` crop in HU (:func:`lesion_crop`: box extended
    symmetrically to ``crop_size``, kept inside the image, larger boxes area-resized). Samples: ``image``
    float32 [3, S, S] (HU ``window`` scaled to [0, 1], grey stacked to 3 channels), ``hu`` [1, S, S],
    ``label`` int64 (Coarse_lesion_type 1..8; -1 unlabelled, train only), ``patient_id`` (Patient_index),
    ``study_id`` (Study_index), ``index`` (position in the split), ``box`` (the lesion box in the crop,
    :func:`box_in_crop`, drawn on figures) and, with ``frangi``, ``vesselness`` [1, S, S] (Frangi et al. 1998
    on the windowed crop). ``class_names`` maps labels to lesion type names.

    ``window`` defaults to the full 12-bit CT range [-1024, 3071] HU, the single window Yan et al. use on
    DeepLesion (3DCE, MICCAI 2018) so that lung, soft-tissue and bone lesions all keep their contrast;
    ``use_dicom_window`` uses each row's DICOM_windows instead (the window the radiologist read it in).
    Unlabelled rows (-1) serve self-supervised training only (``include_unlabelled``); val / test keep
    labelled rows. The real training split is entirely unlabelled (only val and test carry lesion types), so
    a supervised stage names the labelled split it trains on: ``train_splits: [val]`` trains on the val
    lesions of all but a held-out ``val_holdout`` fraction of the val patients, which stay the val split
    (model selection); test is never trained on.

    Each PNG is decoded once per setup (rows sharing a key slice share the read); crops and Frangi maps
    are computed in shards of PNGs, and with ``cache_dir`` stored per shard (keyed by file paths, sizes,
    mtimes, boxes and settings; written atomically), so later runs decode nothing.

    Args:
        data_root: the DeepLesion folder (DL_info.csv, Images_png/).
        crop_size: side of the lesion crop in pixels (paper: 64).
        window / use_dicom_window: HU window of ``image`` (see above).
        frangi_input: feed the Frangi map (scaled per crop to [0, 1], 3 channels) to the model as ``image``
            (the paper's optional preprocessing); needs ``frangi``. The windowed crop stays in ``hu``.
        frangi: add ``vesselness``; ``frangi_scales`` = (first, last, step) sigma in pixels, and
            ``frangi_alpha`` / ``frangi_beta`` / ``frangi_gamma`` / ``frangi_black_ridges`` are the
            parameters of Frangi et al. 1998 (paper: scales 1..9 step 0.2, alpha 1, beta 0.6, gamma 0.0444).
        include_unlabelled: keep the -1 rows in the train split (for self-supervised training).
        train_splits: DL_info splits (``train``, ``val``) whose rows form the training set (default
            ``[train]``); ``test`` is refused.
        val_holdout: with ``val`` in ``train_splits``, the fraction of val patients kept out of training as
            the val split (chosen with a fixed seed; at least one patient).
        crop_mm: crop side in millimetres (from Spacing_mm_px_) instead of ``crop_size`` source pixels; the
            crop is then resized to ``crop_size``. None (paper): ``crop_size`` pixels of the source slice.
        cache_dir: persistent cache of crops and Frangi maps (None: decode on every setup).
        synthesize_if_missing / phantom_patients: write the synthetic phantom when ``data_root`` is missing.
        batch_size: 256 by default: 64 x 64 crops are small and SimCLR's NT-Xent wants many negatives.
        num_workers, predict_split, train_views, seed: see :class:`RetrievalDataModule`; ``num_workers`` also
            sets the threads decoding PNG shards.
    """

    class_names = {-1: "unlabelled", **LESION_TYPES}

    def __init__(self, data_root: str, crop_size: int = 64, window: tuple[float, float] = FULL_WINDOW,
                 use_dicom_window: bool = False, frangi: bool = False,
                 frangi_scales: tuple[float, float, float] = (1.0, 9.0, 0.2), frangi_alpha: float = 1.0,
                 frangi_beta: float = 0.6, frangi_gamma: float = 0.0444, frangi_black_ridges: bool = False,
                 frangi_input: bool = False,
                 include_unlabelled: bool = True, train_splits: Sequence[str] = ("train",),
                 val_holdout: float = 0.3, crop_mm: float | None = None, cache_dir: str | None = None,
                 synthesize_if_missing: bool = False, phantom_patients: int = 40,
                 batch_size: int = 256, num_workers: int = 2, predict_split: str = "test", train_views=None,
                 seed: int | None = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, predict_split=predict_split,
                         train_views=train_views, seed=seed)
        if int(crop_size) < 8:
            raise ValueError(f"crop_size={crop_size}: expected an integer >= 8")
        if int(phantom_patients) < 3:
            raise ValueError(f"phantom_patients={phantom_patients}: expected >= 3 (train, val and test)")
        self.save_hyperparameters(ignore=["train_views"])
        self.data_root = Path(data_root)
        self.crop_size = int(crop_size)
        self.window = check_window(window, "window")
        self.use_dicom_window = bool(use_dicom_window)
        self.frangi = bool(frangi)
        if frangi_input and not frangi:
            raise ValueError("frangi_input=true needs frangi=true (the vesselness maps are computed there)")
        self.frangi_input = bool(frangi_input)
        self.frangi_params = dict(sigmas=frangi_sigmas(*frangi_scales), alpha=float(frangi_alpha),
                                  beta=float(frangi_beta), gamma=float(frangi_gamma),
                                  black_ridges=bool(frangi_black_ridges))
        self.include_unlabelled = bool(include_unlabelled)
        self.train_splits = [str(x) for x in ([train_splits] if isinstance(train_splits, str) else train_splits)]
        bad = [x for x in self.train_splits if x not in ("train", "val")]
        if bad or not self.train_splits:
            raise ValueError(f"train_splits={list(self.train_splits)}: expected a non-empty list of 'train' and/or "
                             f"'val' (DL_info Train_Val_Test 1 / 2); the test split is never trained on")
        if "val" in self.train_splits and not 0.0 < float(val_holdout) < 1.0:
            raise ValueError(f"val_holdout={val_holdout}: with 'val' in train_splits, expected a fraction in "
                             f"(0, 1) of val patients held out for validation")
        self.val_holdout = float(val_holdout)
        if crop_mm is not None and not float(crop_mm) > 0:
            raise ValueError(f"crop_mm={crop_mm}: expected a positive size in millimetres, or null")
        self.crop_mm = float(crop_mm) if crop_mm is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.synthesize_if_missing = bool(synthesize_if_missing)
        self.phantom_patients = int(phantom_patients)
        self.rows: dict[str, list[LesionRow]] = {}  # split -> CSV rows in dataset order (lesion metadata)

    # -- data on disk -----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Write the phantom when ``data_root`` is missing and ``synthesize_if_missing``; with ``cache_dir``
        fill the crop (and Frangi) cache here, in one process, so ranks only read it."""
        rows = self._lesion_rows()
        if self.cache_dir is not None:
            self.decode(rows)

    def _lesion_rows(self) -> list[LesionRow]:
        ensure_data_root(self.data_root, self.synthesize_if_missing, self._write_phantom,
                         "the DeepLesion folder (holding DL_info.csv and Images_png/)",
                         PHANTOM_COMMAND.format(root=self.data_root))
        return read_dl_info(self.data_root)

    def _write_phantom(self) -> None:
        from datamodules.synthetic.deeplesion import write_deeplesion_phantom

        write_phantom_atomic(self.data_root, partial(write_deeplesion_phantom, n_patients=self.phantom_patients),
                             f"DeepLesion phantom ({self.phantom_patients} patients)", "DeepLesion", log)

    # -- decoding (each PNG once) -------------------------------------------------------------------
    def _shards(self, rows: list[LesionRow]) -> list[list[int]]:
        """Row indices grouped by PNG, in groups of ``FILES_PER_SHARD`` PNGs (CSV order)."""
        by_file: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_file.setdefault(row.file_name, []).append(i)
        files = list(by_file.values())
        return [[i for f in files[k:k + FILES_PER_SHARD] for i in f]
                for k in range(0, len(files), FILES_PER_SHARD)]

    def _check_pngs(self, rows: list[LesionRow]) -> None:
        """One clear error for the first PNG named in DL_info.csv that is missing."""
        for row in {r.file_name: r for r in reversed(rows)}.values():
            path = row.png(self.data_root)
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found (File_name {row.file_name} on line {row.line} of "
                                        f"{self.data_root / 'DL_info.csv'}); is Images_png complete?")

    def _crop_shard(self, rows: list[LesionRow]) -> np.ndarray:
        """HU crops [n, S, S] of rows sharing PNGs: each PNG decoded once."""
        crops = np.empty((len(rows), self.crop_size, self.crop_size), np.float32)
        images: dict[str, np.ndarray] = {}
        for i, row in enumerate(rows):
            hu = images.get(row.file_name)
            if hu is None:
                path = row.png(self.data_root)
                hu = images[row.file_name] = read_hu_png(path)
                if sorted(hu.shape) != sorted(row.image_size):
                    raise ValueError(f"{path}: image is {hu.shape[0]} x {hu.shape[1]} but Image_size on "
                                     f"line {row.line} of DL_info.csv says {row.image_size[0]} x "
                                     f"{row.image_size[1]}")
            crops[i] = lesion_crop(hu, row.box, self.crop_size, window=self.window_pixels(row))
        return crops

    def window_pixels(self, row: LesionRow) -> int:
        """Side of the crop window in source pixels: ``crop_size``, or ``crop_mm`` / the row's spacing."""
        if self.crop_mm is None:
            return self.crop_size
        if not row.spacing_mm > 0:
            raise ValueError(f"DL_info.csv line {row.line}: Spacing_mm_px_ {row.spacing_mm} must be > 0 for crop_mm")
        return max(4, int(round(self.crop_mm / row.spacing_mm)))

    def _windows(self, rows: list[LesionRow]) -> np.ndarray:
        if self.use_dicom_window:
            return np.array([r.dicom_window for r in rows], np.float64)
        return np.tile(np.array(self.window, np.float64), (len(rows), 1))

    def _vesselness(self, crops: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Frangi vesselness of the windowed crops ([0, 1], as Qi et al. filter the [0, 1] image)."""
        lo, hi = windows[:, :1, None], windows[:, 1:, None]
        image = (np.clip(crops, lo, hi) - lo) / (hi - lo)
        return frangi_vesselness(image.astype(np.float32), **self.frangi_params).astype(np.float32)

    def _shard_key(self, rows: list[LesionRow]) -> str:
        """Cache key of a shard's crops: PNG paths, sizes and mtimes, boxes, crop settings."""
        files = list(dict.fromkeys(r.png(self.data_root) for r in rows))
        return cache_key(CACHE_VERSION, self.crop_size, AIR_HU, self.crop_mm, file_stats(files),
                         [(r.file_name, r.box) for r in rows], length=20)

    def _cache_file(self, kind: str, key: str) -> Path | None:
        return self.cache_dir / f"deeplesion-{kind}-{key}.npz" if self.cache_dir is not None else None

    def _decode_shard(self, rows: list[LesionRow], key: str) -> np.ndarray:
        return npz_cached(self._cache_file("crops", key), lambda: {"hu": self._crop_shard(rows)},
                          shapes={"hu": (len(rows), self.crop_size, self.crop_size)}, logger=log)["hu"]

    def _frangi_shard(self, rows: list[LesionRow], crops: np.ndarray, key: str) -> np.ndarray:
        windows = self._windows(rows)
        path = self._cache_file("frangi", cache_key(key, windows.tolist(), self.frangi_params, length=20))
        return npz_cached(path, lambda: {"vesselness": self._vesselness(crops, windows)},
                          shapes={"vesselness": crops.shape}, logger=log)["vesselness"]

    def decode(self, rows: list[LesionRow]) -> dict[str, np.ndarray]:
        """HU crops [n, S, S] of all rows (``vesselness`` too with ``frangi``), from ``cache_dir`` if there.

        PNG shards are decoded in threads; the Frangi filter runs batched per shard (torch threads)."""
        self._check_pngs(rows)
        index = self._shards(rows)
        shards = [[rows[i] for i in idx] for idx in index]
        keys = [self._shard_key(shard) if self.cache_dir is not None else "" for shard in shards]
        workers = max(1, min(self.num_workers, 8, len(shards)))
        with ThreadPoolExecutor(workers) as pool:
            crops = list(pool.map(self._decode_shard, shards, keys))
        order = np.concatenate(index) if index else np.zeros(0, int)
        out = {"hu": np.empty((len(rows), self.crop_size, self.crop_size), np.float32)}
        if crops:
            out["hu"][order] = np.concatenate(crops)
        if self.frangi:
            out["vesselness"] = np.empty_like(out["hu"])
            if crops:
                out["vesselness"][order] = np.concatenate(
                    [self._frangi_shard(*args) for args in zip(shards, crops, keys, strict=True)])
        return out

    # -- datasets ---------------------------------------------------------------------------------
    def _window_transform(self) -> Callable[[dict], dict]:
        window = self._hu_window_transform()
        if not self.frangi_input:
            return window

        def frangi_image(sample: dict) -> dict:  # the paper's preprocessing: the network sees vesselness
            v = sample["vesselness"]
            return {**window(sample), "image": (v / v.max().clamp_min(1e-12)).expand(3, -1, -1).contiguous()}

        return frangi_image

    def _hu_window_transform(self) -> Callable[[dict], dict]:
        if not self.use_dicom_window:
            return HounsfieldWindowd("hu", self.window, output_key="image", channels=3)

        def dicom_window(sample: dict) -> dict:  # each row's own DICOM_windows
            lo, hi = (float(v) for v in sample["dicom_window"])
            return {**sample, "image": hounsfield_window(sample["hu"], (lo, hi)).repeat(3, 1, 1)}

        return dicom_window

    def split_rows(self, rows: list[LesionRow]) -> dict[str, list[int]]:
        """Row positions of the train / val / test datasets (see ``train_splits`` and ``val_holdout``)."""
        labelled = {s: [i for i, r in enumerate(rows) if r.split == s and r.lesion_type != -1] for s in SPLITS}
        val = labelled["val"]
        held = set()
        if "val" in self.train_splits:
            patients = sorted({rows[i].patient_id for i in val})
            n_held = max(1, round(self.val_holdout * len(patients))) if patients else 0
            held = set(np.random.default_rng(0).permutation(patients)[:n_held].tolist())
            val = [i for i in val if rows[i].patient_id in held]
        train = []
        for split in self.train_splits:
            if split == "train":
                train += [i for i, r in enumerate(rows) if r.split == "train"
                          and (r.lesion_type != -1 or self.include_unlabelled)]
            else:
                train += [i for i in labelled["val"] if rows[i].patient_id not in held]
        return {"train": sorted(train), "val": val, "test": labelled["test"]}

    def build_datasets(self) -> dict[str, MonaiDataset]:
        rows = self._lesion_rows()
        decoded = self.decode(rows)
        datasets = {}
        for split, keep in self.split_rows(rows).items():
            dropped = sum(1 for r in rows if r.split == split and r.lesion_type == -1 and split != "train")
            if dropped:
                log.warning("DeepLesion %s: %d unlabelled rows (Coarse_lesion_type -1) left out of "
                            "evaluation", split, dropped)
            records = []
            for i in keep:
                r = rows[i]
                rec = {"hu": torch.from_numpy(decoded["hu"][i:i + 1]), "label": torch.tensor(r.lesion_type),
                       "patient_id": torch.tensor(r.patient_id), "study_id": torch.tensor(r.study_id),
                       "index": torch.tensor(len(records)),
                       "box": torch.from_numpy(box_in_crop(r.box, r.image_size, self.crop_size,
                                                           self.window_pixels(r)))}
                if self.frangi:
                    rec["vesselness"] = torch.from_numpy(decoded["vesselness"][i:i + 1])
                if self.use_dicom_window:
                    check_window(r.dicom_window, f"DL_info.csv line {r.line} DICOM_windows")
                    rec["dicom_window"] = torch.tensor(r.dicom_window, dtype=torch.float32)
                records.append(rec)
            self.rows[split] = [rows[i] for i in keep]
            datasets[split] = MonaiDataset(records, transform=self._window_transform())
            types = np.bincount([max(r.lesion_type, 0) for r in self.rows[split]], minlength=9)
            n_patients = len({r.patient_id for r in self.rows[split]})
            log.info("DeepLesion %s: %d lesions of %d patients (unlabelled %d, per type %s)", split,
                     len(records), n_patients, types[0], types[1:].tolist())
        return datasets
