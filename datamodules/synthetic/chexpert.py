"""Tiny synthetic copy of CheXpert-v1.0-small (Irvin et al. 2019): ``train.csv`` / ``valid.csv`` + JPEGs.

Writes the real layout under ``root`` (the ``CheXpert-v1.0-small`` folder): ``train.csv`` and ``valid.csv``
with the real 19-column header, paths ``CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyN/
viewN_{frontal,lateral}.jpg`` relative to the folder above ``root``, and 8-bit grey JPEG radiographs.

Labels follow the real ``train.csv`` (torchxrayvision ships it): the Pleural Effusion state (1 / 0 / -1 /
blank) is drawn with its real frequency, every other finding from its real frequency *given* the effusion
state (constants below, fitted once on the 223,414 real rows), so prevalence and the main co-occurrences
match. Patients have several studies (real: 2.9 studies and 3.5 images per patient); a lateral view
accompanies some frontal ones (real: 14.5 % of images); frontal views are AP or PA (real: 85 / 15 %).
``valid.csv`` holds 0 / 1 only, as the real one (uncertain and blank read as 0, uncertain sometimes 1).

Drawing (grey, dark = air): body, two dark lungs with rib shadows, heart and diaphragm. Pleural effusion
is fluid at the lung base: a bright layer whose upper border is a meniscus rising towards the lateral chest
wall, which blunts the costophrenic angle (one or both sides; small for uncertain labels). Other findings
that show on film are drawn too (cardiomegaly: larger heart; lung opacity / consolidation / pneumonia:
blotches; edema: perihilar haze; atelectasis: a band; pneumothorax: a dark apical rim without lung
markings; support devices: a bright tube). Anatomy, exposure and noise vary per patient and study, so the
label is only in the findings. Same seed -> byte-identical files.

Command: ``python -m datamodules.synthetic.chexpert --root data/phantom/CheXpert-v1.0-small --seed 0``
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

FINDINGS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
            "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
            "Fracture", "Support Devices")
CSV_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + FINDINGS
STATES = (1.0, 0.0, -1.0, None)  # positive, negative, uncertain, blank (not mentioned)
#: P(Pleural Effusion state) in the real train.csv, states ordered as STATES.
EFFUSION_P = (0.3858, 0.1584, 0.052, 0.4037)
#: P(finding state | effusion state) in the real train.csv: rows = effusion state, columns = finding state.
CONDITIONAL_P = {
    "No Finding": [[0.0, 0.0, 0.0, 1.0], [0.323, 0.0, 0.0, 0.677], [0.0, 0.0, 0.0, 1.0], [0.121, 0.0, 0.0, 0.879]],
    "Enlarged Cardiomediastinum": [[0.045, 0.027, 0.055, 0.873], [0.071, 0.368, 0.087, 0.474],
                                   [0.063, 0.078, 0.069, 0.789], [0.04, 0.06, 0.041, 0.858]],
    "Cardiomegaly": [[0.137, 0.018, 0.033, 0.811], [0.106, 0.167, 0.044, 0.683], [0.135, 0.067, 0.043, 0.755],
                     [0.109, 0.032, 0.035, 0.824]],
    "Lung Opacity": [[0.606, 0.007, 0.018, 0.368], [0.238, 0.111, 0.023, 0.628], [0.51, 0.021, 0.083, 0.387],
                     [0.433, 0.02, 0.025, 0.523]],
    "Lung Lesion": [[0.038, 0.002, 0.005, 0.955], [0.046, 0.02, 0.007, 0.927], [0.046, 0.005, 0.014, 0.934],
                    [0.042, 0.004, 0.007, 0.947]],
    "Edema": [[0.308, 0.045, 0.046, 0.602], [0.053, 0.286, 0.026, 0.636], [0.145, 0.075, 0.082, 0.699],
              [0.246, 0.065, 0.08, 0.609]],
    "Consolidation": [[0.086, 0.018, 0.139, 0.757], [0.018, 0.473, 0.032, 0.477], [0.06, 0.08, 0.242, 0.618],
                      [0.067, 0.099, 0.131, 0.704]],
    "Pneumonia": [[0.02, 0.003, 0.082, 0.895], [0.015, 0.01, 0.043, 0.931], [0.023, 0.005, 0.079, 0.893],
                  [0.039, 0.023, 0.103, 0.835]],
    "Atelectasis": [[0.189, 0.002, 0.176, 0.633], [0.089, 0.015, 0.064, 0.832], [0.163, 0.003, 0.225, 0.61],
                    [0.134, 0.006, 0.152, 0.708]],
    "Pneumothorax": [[0.078, 0.16, 0.01, 0.753], [0.02, 0.49, 0.002, 0.487], [0.041, 0.156, 0.071, 0.732],
                     [0.128, 0.259, 0.016, 0.597]],
    "Pleural Other": [[0.011, 0.001, 0.004, 0.985], [0.019, 0.002, 0.003, 0.976], [0.028, 0.002, 0.165, 0.805],
                      [0.018, 0.002, 0.003, 0.977]],
    "Fracture": [[0.028, 0.001, 0.001, 0.969], [0.046, 0.027, 0.004, 0.923], [0.044, 0.006, 0.003, 0.946],
                 [0.049, 0.015, 0.004, 0.932]],
    "Support Devices": [[0.613, 0.03, 0.004, 0.353], [0.359, 0.019, 0.005, 0.617], [0.478, 0.02, 0.004, 0.498],
                        [0.498, 0.03, 0.005, 0.468]],
}
LATERAL_P = 0.145      # share of lateral images in the real train.csv (32,387 / 223,414)
PA_P = 0.154           # share of PA among frontal images (29,420 / 191,027)
MEAN_STUDIES = 2.9     # studies per patient in the real train.csv (64,540 patients)
AGE_MEAN, AGE_SD = 60.4, 17.8


def _state(rng: np.random.Generator, probs) -> float | None:
    p = np.asarray(probs, float)
    return STATES[int(rng.choice(4, p=p / p.sum()))]


def sample_labels(rng: np.random.Generator, valid: bool = False) -> dict[str, float | None]:
    """One study's 14 labels: effusion from EFFUSION_P, the others from CONDITIONAL_P given it. ``valid``:
    0 / 1 only, as the real valid.csv (blank -> 0, uncertain -> 0 or 1 at random)."""
    e = STATES.index(_state(rng, EFFUSION_P))
    labels = {name: _state(rng, CONDITIONAL_P[name][e]) for name in FINDINGS if name != "Pleural Effusion"}
    labels["Pleural Effusion"] = STATES[e]
    if valid:
        labels = {k: (float(rng.integers(2)) if v == -1.0 else (v or 0.0)) for k, v in labels.items()}
    return labels


def _smooth(img: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 blur along both axes (the detector's point spread)."""
    for axis in (0, 1):
        pad = np.pad(img, [(1, 1) if a == axis else (0, 0) for a in range(2)], mode="edge")
        img = 0.25 * np.take(pad, range(img.shape[axis]), axis) + 0.5 * img + \
            0.25 * np.take(pad, range(2, img.shape[axis] + 2), axis)
    return img


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def draw_radiograph(labels: dict, anatomy: dict, lateral: bool, shape: tuple[int, int],
                    rng: np.random.Generator) -> np.ndarray:
    """One radiograph in [0, 1] (dark = air) with the study's visible findings (see the module docstring)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = 2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1 + anatomy["shift"]
    pos = lambda name: labels.get(name) == 1.0  # noqa: E731
    img = 0.08 + 0.5 * _sigmoid((0.92 * anatomy["body"] - np.abs(x)) * 25)          # air around the body
    lungs = []
    centres = [0.0] if lateral else [-0.42, 0.42]
    for cx in centres:
        a, b = (0.62, 0.62) if lateral else (0.3 * anatomy["body"], 0.58)
        lung = _sigmoid((1 - ((x - cx) / a) ** 2 - ((y + 0.05) / b) ** 2) * 8)
        lungs.append((cx, a, b, lung))
        img = img - 0.34 * lung
    ribs = 0.05 * (np.sin((y * 9 + np.abs(x) * 2.5) * np.pi + anatomy["rib_phase"]) > 0.6)
    img = img + ribs * sum(lg for *_, lg in lungs)
    heart_r = 0.26 * anatomy["heart"] * (1.35 if pos("Cardiomegaly") or pos("Enlarged Cardiomediastinum") else 1)
    hx = 0.2 if lateral else 0.08
    img = img + 0.3 * _sigmoid((1 - ((x - hx) / heart_r) ** 2 - ((y - 0.22) / (0.8 * heart_r)) ** 2) * 6)
    img = img + 0.35 * _sigmoid((y - 0.58 - 0.1 * x ** 2) * 20)                      # diaphragm / abdomen
    effusion = labels.get("Pleural Effusion")
    if effusion == 1.0 or (effusion == -1.0 and rng.random() < 0.5):
        level = rng.uniform(0.25, 0.45) if effusion == 1.0 else rng.uniform(0.1, 0.2)
        sides = lungs if lateral else [lungs[i] for i in ([0, 1] if rng.random() < 0.4 else [int(rng.integers(2))])]
        for cx, a, b, lung in sides:
            lateral_dist = np.abs(x - cx) / a if not lateral else np.abs(x + 0.4) / a   # posterior for lateral
            surface = (0.53 - 2 * level * b) - 0.3 * lateral_dist ** 2               # meniscus: rises laterally
            img = img + 0.36 * lung * _sigmoid((y - surface) * 18)
    for name, amount in (("Lung Opacity", 0.14), ("Consolidation", 0.18), ("Pneumonia", 0.12),
                         ("Lung Lesion", 0.2)):
        if pos(name):
            cx, a, b, lung = lungs[int(rng.integers(len(lungs)))]
            px, py, r = cx + rng.uniform(-0.5, 0.5) * a, rng.uniform(-0.5, 0.2), rng.uniform(0.08, 0.2)
            if name == "Lung Lesion":
                r = r / 2
            img = img + amount * lung * np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * r ** 2))
    if pos("Edema"):
        img = img + 0.12 * sum(lg for *_, lg in lungs) * np.exp(-((np.abs(x) - 0.25) ** 2 + (y - 0.05) ** 2) / 0.08)
    if pos("Atelectasis"):
        cx, a, b, lung = lungs[-1]
        img = img + 0.15 * lung * np.exp(-((y - 0.2 - 0.2 * (x - cx)) ** 2) / 0.002)
    if pos("Pneumothorax") and not lateral:
        cx, a, b, lung = lungs[int(rng.integers(2))]
        rim = lung * _sigmoid((np.abs(x - cx) / a - 0.7) * 20) * _sigmoid((-y - 0.1) * 10)
        img = img - 0.08 * rim - ribs * rim
    if pos("Support Devices"):
        tx = rng.uniform(-0.1, 0.1)
        img = img + 0.4 * np.exp(-((x - tx - 0.05 * y) ** 2) / 0.0008) * (y < rng.uniform(0.0, 0.4))
    img = anatomy["contrast"] * img + anatomy["brightness"] + rng.normal(0, 0.025, img.shape)
    return np.clip(_smooth(img), 0, 1)


def _jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.rint(img * 255).astype(np.uint8), mode="L").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def write_chexpert_phantom(root: str | Path, n_train_patients: int = 80, n_valid_patients: int = 60,
                           image_shape: tuple[int, int] = (72, 64), seed: int = 0,
                           folder_name: str | None = None) -> Path:
    """Write the phantom into ``root`` (named like ``CheXpert-v1.0-small``); returns ``root``.

    Train patients get 1 + Poisson(MEAN_STUDIES - 1) studies, valid patients one study (as the real
    valid.csv, 200 patients / 234 images); each study has a frontal view and, with LATERAL_P / (1 -
    LATERAL_P) odds, a lateral one. CSV paths start with ``folder_name`` (default: ``root``'s name; set it
    when writing into a temporary folder that is renamed afterwards)."""
    root = Path(root)
    folder_name = folder_name or root.name
    rng = np.random.default_rng(seed)
    for split, n_patients, first in (("train", n_train_patients, 1), ("valid", n_valid_patients, 64541)):
        rows = []
        for p in range(first, first + n_patients):
            anatomy = {"body": rng.uniform(0.85, 1.05), "heart": rng.uniform(0.85, 1.1),
                       "rib_phase": rng.uniform(0, 2 * np.pi), "shift": rng.uniform(-0.06, 0.06)}
            sex = "Male" if rng.random() < 0.594 else "Female"
            age = int(np.clip(rng.normal(AGE_MEAN, AGE_SD), 18, 90))
            n_studies = 1 if split == "valid" else 1 + int(rng.poisson(MEAN_STUDIES - 1))
            for s in range(1, n_studies + 1):
                labels = sample_labels(rng, valid=split == "valid")
                study_anatomy = {**anatomy, "contrast": rng.uniform(0.85, 1.15),
                                 "brightness": rng.uniform(-0.06, 0.06)}
                projection = "PA" if rng.random() < PA_P else "AP"
                views = ["frontal"] + (["lateral"] if rng.random() < LATERAL_P / (1 - LATERAL_P) else [])
                for v, view in enumerate(views, start=1):
                    rel = f"{split}/patient{p:05d}/study{s}/view{v}_{view}.jpg"
                    path = root / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(_jpeg(draw_radiograph(labels, study_anatomy, view == "lateral",
                                                           image_shape, rng)))
                    rows.append([f"{folder_name}/{rel}", sex, age, view.capitalize(),
                                 projection if view == "frontal" else ""]
                                + [_fmt(labels[f]) for f in FINDINGS])
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic CheXpert-v1.0-small (CSVs + JPEGs).")
    parser.add_argument("--root", default="data/phantom/CheXpert-v1.0-small", help="CheXpert folder to write")
    parser.add_argument("--train-patients", type=int, default=80)
    parser.add_argument("--valid-patients", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_chexpert_phantom(args.root, args.train_patients, args.valid_patients, seed=args.seed)
    print(f"wrote synthetic CheXpert phantom ({args.train_patients} + {args.valid_patients} patients) to {root}")


if __name__ == "__main__":
    main()
