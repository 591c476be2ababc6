"""Tiny synthetic copy of NIH ChestX-ray14: ``Data_Entry_2017_v2020.csv``, 8-bit PNGs, the two list files.

Each image is a frontal radiograph drawn as an attenuation map (bright = dense): body wall, dark lungs cut
by the diaphragm domes (sharp costophrenic angles), mediastinum and spine, heart (cardiothoracic ratio
0.40-0.48), posterior ribs, clavicles and branching lung vessels. Findings are drawn where they belong:

Atelectasis: plate-like band in a lower zone and a raised hemidiaphragm (volume loss); Cardiomegaly: heart
shadow widened to a ratio > 0.55; Effusion: fluid opacity with a meniscus filling the costophrenic angle;
Infiltration: patchy ill-defined opacities; Mass: one round opacity 10-16 % of the image wide; Nodule: 1-3
round opacities 3-6 %; Pneumonia: a fuzzy, textured lower/mid-zone patch; Pneumothorax: a lateral rim
without vessels, darker, bounded by a thin pleural line; Consolidation: a dense homogeneous lobar opacity;
Edema: bilateral perihilar (bat-wing) haze; Emphysema: hyperlucent, over-inflated lungs with flat domes and
sparse vessels; Fibrosis: fine reticular lines in the upper zones; Pleural_Thickening: a bright band along
the lateral chest wall and an apical cap; Hernia: a retrocardiac round shadow with an air-fluid level.

Label combinations are drawn from the 80 most frequent combinations of the real ``Data_Entry_2017_v2020.csv``
(96 % of its rows; counts below), so prevalence and co-occurrence follow the real data. Patients have 1-8
images (real distribution of follow-ups, capped); a follow-up keeps the previous labels with probability 0.6.
Anatomy varies per patient and slightly per image, views are PA or AP (60 / 40 % as in the real file, not tied
to labels), and file names, folders and views carry no label information. Test patients (about 20 %) are
disjoint from train_val patients. Same seed -> byte-identical files.

Command: ``python -m datamodules.synthetic.chestxray14 --root data/phantom/ChestX-ray14 --seed 0``
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
          "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
          "No Finding")
HEADER_V2020 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# The 80 most frequent label combinations of the real Data_Entry_2017_v2020.csv (112,120 rows) and their counts.
REAL_COMBINATIONS = (
    ("No Finding", 60361), ("Infiltration", 9547), ("Atelectasis", 4215), ("Effusion", 3955), ("Nodule", 2705),
    ("Pneumothorax", 2194), ("Mass", 2139), ("Effusion|Infiltration", 1604), ("Atelectasis|Infiltration", 1350),
    ("Consolidation", 1310), ("Atelectasis|Effusion", 1167), ("Pleural_Thickening", 1126), ("Cardiomegaly", 1093),
    ("Emphysema", 892), ("Infiltration|Nodule", 829), ("Atelectasis|Effusion|Infiltration", 739), ("Fibrosis", 727),
    ("Edema", 628), ("Cardiomegaly|Effusion", 484), ("Infiltration|Consolidation", 441), ("Infiltration|Mass", 420),
    ("Effusion|Pneumothorax", 403), ("Effusion|Mass", 402), ("Atelectasis|Consolidation", 398), ("Mass|Nodule", 396),
    ("Infiltration|Edema", 392), ("Infiltration|Pneumothorax", 347), ("Pneumothorax|Emphysema", 337),
    ("Effusion|Consolidation", 337), ("Pneumonia", 322), ("Effusion|Pleural_Thickening", 251),
    ("Effusion|Nodule", 250), ("Atelectasis|Pneumothorax", 241), ("Infiltration|Pleural_Thickening", 210),
    ("Cardiomegaly|Infiltration", 201), ("Atelectasis|Nodule", 201), ("Atelectasis|Effusion|Consolidation", 200),
    ("Infiltration|Pneumonia", 199), ("Effusion|Edema", 189), ("Infiltration|Fibrosis", 185),
    ("Mass|Pneumothorax", 179), ("Atelectasis|Mass", 178), ("Mass|Consolidation", 151),
    ("Nodule|Pleural_Thickening", 141), ("Infiltration|Pneumonia|Edema", 138),
    ("Effusion|Infiltration|Consolidation", 134), ("Mass|Pleural_Thickening", 132), ("Nodule|Pneumothorax", 130),
    ("Nodule|Consolidation", 128), ("Effusion|Infiltration|Edema", 127), ("Infiltration|Emphysema", 126),
    ("Cardiomegaly|Effusion|Infiltration", 120), ("Atelectasis|Emphysema", 117),
    ("Atelectasis|Pleural_Thickening", 117), ("Hernia", 110), ("Atelectasis|Pneumonia", 108),
    ("Effusion|Infiltration|Nodule", 106), ("Atelectasis|Fibrosis", 104),
    ("Atelectasis|Infiltration|Consolidation", 104), ("Effusion|Infiltration|Mass", 99),
    ("Atelectasis|Effusion|Pneumothorax", 99), ("Effusion|Emphysema", 96),
    ("Effusion|Infiltration|Pneumothorax", 88), ("Atelectasis|Cardiomegaly", 88), ("Pneumonia|Edema", 83),
    ("Atelectasis|Effusion|Infiltration|Consolidation", 81), ("Pneumothorax|Pleural_Thickening", 79),
    ("Atelectasis|Effusion|Mass", 72), ("Atelectasis|Infiltration|Pneumothorax", 72),
    ("Infiltration|Pneumothorax|Emphysema", 72), ("Effusion|Infiltration|Pleural_Thickening", 71),
    ("Fibrosis|Pleural_Thickening", 70), ("Atelectasis|Cardiomegaly|Effusion", 68), ("Infiltration|Mass|Nodule", 67),
    ("Atelectasis|Infiltration|Mass", 67), ("Mass|Emphysema", 66), ("Nodule|Fibrosis", 66),
    ("Effusion|Mass|Consolidation", 65), ("Effusion|Mass|Nodule", 65), ("Effusion|Fibrosis", 59),
)
# Real prevalence of each label (count of images of the 112,120), for comparison in tests and docs.
REAL_PREVALENCE = {"Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894,
                   "Mass": 5782, "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302, "Consolidation": 4667,
                   "Edema": 2303, "Emphysema": 2516, "Fibrosis": 1686, "Pleural_Thickening": 3385, "Hernia": 227,
                   "No Finding": 60361}
REAL_ROWS = 112120
# Patients with 1..8 images in the real file (more than 8: capped here).
REAL_IMAGES_PER_PATIENT = (17503, 4113, 2100, 1330, 938, 787, 608, 494)
KEEP_LABELS_P = 0.6


def combination_probabilities() -> tuple[list[str], np.ndarray]:
    names = [c for c, _ in REAL_COMBINATIONS]
    counts = np.array([n for _, n in REAL_COMBINATIONS], float)
    return names, counts / counts.sum()


# -- drawing ----------------------------------------------------------------------------------------------
def _soft(level: np.ndarray, edge: float = 0.08) -> np.ndarray:
    """1 inside (level < 1), 0 outside, a smooth ramp of width ``edge`` around the boundary."""
    return np.clip((1.0 + edge - level) / (2 * edge), 0.0, 1.0)


def _ell(u, v, cu, cv, a, b):
    return ((u - cu) / a) ** 2 + ((v - cv) / b) ** 2


def _segments(u, v, segs: list[tuple], width: float) -> np.ndarray:
    """Max over segments (u0, v0, u1, v1, intensity) of intensity * profile(distance / width)."""
    best = np.full_like(u, np.inf)
    for u0, v0, u1, v1, inten in segs:  # max of inten * exp(-d2 / 2w^2) = exp(-min(d2 / 2w^2 - ln inten))
        du, dv = u1 - u0, v1 - v0
        t = np.clip(((u - u0) * du + (v - v0) * dv) / max(du * du + dv * dv, 1e-9), 0, 1)
        d2 = (u - u0 - t * du) ** 2 + (v - v0 - t * dv) ** 2
        np.minimum(best, d2 / (2 * width * width) - np.log(inten), out=best)
    return np.exp(-best)


def _vessels(rng, hila, n_rays: int) -> list[tuple]:
    segs = []
    for side, (hu, hv) in zip((-1, 1), hila):
        for _ in range(n_rays):
            ang = rng.uniform(-1.3, 1.6)  # from up-lateral to down-lateral
            length = rng.uniform(0.12, 0.22)
            du, dv = side * np.cos(ang) * length, -np.sin(ang) * length * 0.9
            segs.append((hu, hv, hu + du, hv + dv, 1.0))
            for _ in range(2):  # one level of branches
                t = rng.uniform(0.4, 0.8)
                bu, bv = hu + t * du, hv + t * dv
                a2 = ang + rng.uniform(-0.7, 0.7)
                l2 = length * rng.uniform(0.3, 0.55)
                segs.append((bu, bv, bu + side * np.cos(a2) * l2, bv - np.sin(a2) * l2 * 0.9, 0.7))
    return segs


def _smooth_noise(rng, n: int, cells: int) -> np.ndarray:
    """Low-frequency random field in [-1, 1] (coarse grid, bilinear upsampling)."""
    grid = rng.uniform(-1, 1, (cells, cells))
    pos = np.linspace(0, cells - 1, n)
    i0 = np.minimum(np.floor(pos).astype(int), cells - 2)
    w = pos - i0
    m = np.zeros((n, cells))
    m[np.arange(n), i0], m[np.arange(n), i0 + 1] = 1 - w, w
    return m @ grid @ m.T


def _blur(img: np.ndarray, passes: int = 1) -> np.ndarray:
    for _ in range(passes):
        p = np.pad(img, 1, mode="edge")
        img = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] + 4 * img) / 8
    return img


def draw_radiograph(patient: dict, labels: set[str], view: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """One frontal chest radiograph [n, n] in [0, 1] (bright = dense) with ``labels`` drawn."""
    v, u = np.mgrid[0:n, 0:n].astype(np.float32) / (n - 1)
    p = {k: val + rng.normal(0, 0.004) if isinstance(val, float) else val for k, val in patient.items()}
    u = u - p["shift_u"]
    v = v - p["shift_v"]
    mag = 1.08 if view == "AP" else 1.0  # AP: heart magnified (source closer, film behind)
    emph = "Emphysema" in labels
    img = np.full((n, n), 0.04, np.float32)
    body = _soft(np.abs((u - 0.5) / (p["body_w"] / 2 + 0.04 * v)) ** 4, 0.15)
    img += 0.42 * body
    # lungs, cut below by the diaphragm domes (right dome higher: patient's right = image left)
    lung_mask = np.zeros((n, n), np.float32)
    domes = []
    for side in (-1, 1):
        cu = 0.5 + side * p["lung_sep"]
        a, b = p["lung_w"], p["lung_h"] * (1.1 if emph else 1.0)
        lung = _soft(_ell(u, v, cu, 0.47, a, b), 0.05)
        base = p["dome_base"] + (0.0 if side == -1 else 0.025) + (0.05 if emph else 0.0)
        if "Atelectasis" in labels and side == p["atelectasis_side"]:
            base -= 0.05
        amp = 0.02 if emph else p["dome_amp"]
        dome = base - amp * (1 - ((u - cu) / a) ** 2)
        domes.append((cu, a, dome))
        lung = lung * np.clip((dome - v) / 0.01, 0, 1)
        lung_mask = np.maximum(lung_mask, lung)
    below = np.clip((v - np.minimum(domes[0][2], domes[1][2])) / 0.02, 0, 1) * body
    img += 0.1 * below
    img -= (0.34 + (0.06 if emph else 0.0)) * lung_mask
    # lung vessels (sparse in emphysema; removed inside a pneumothorax rim below)
    hila = [(0.5 - 0.085, 0.45), (0.5 + 0.085, 0.46)]
    marks = _segments(u, v, _vessels(rng, hila, 6), 0.006) * lung_mask * (0.35 if emph else 1.0)
    ptx = None
    if "Pneumothorax" in labels:
        side = p["ptx_side"]
        cu = 0.5 + side * p["lung_sep"]
        shrink = rng.uniform(0.72, 0.82)
        inner = _soft(_ell(u, v, cu + side * -0.02, 0.5, p["lung_w"] * shrink, p["lung_h"] * shrink), 0.02)
        half = (u - 0.5) * side > 0
        ptx = (lung_mask > 0.5) & (inner < 0.5) & half
        marks = np.where(ptx, 0.0, marks)
        img -= 0.07 * ptx
        edge = np.abs(_ell(u, v, cu + side * -0.02, 0.5, p["lung_w"] * shrink, p["lung_h"] * shrink) - 1) < 0.06
        img += 0.14 * (edge & half & (lung_mask > 0.5))
    img += 0.11 * marks
    # mediastinum and spine
    img += 0.22 * _soft(np.abs((u - 0.5) / 0.045) ** 2 + 0 * v, 0.3) * (v > 0.05)
    spine = _soft(np.abs((u - 0.5) / 0.03) ** 2 + 0 * v, 0.2)
    img += 0.04 * spine * (0.6 + 0.4 * (np.sin(v * n * 2 * np.pi / (n / 9)) > -0.3))
    # heart: cardiothoracic ratio p["ctr"] (x 1.25-1.4 in cardiomegaly)
    ctr = p["ctr"] * (rng.uniform(1.25, 1.4) if "Cardiomegaly" in labels else 1.0) * mag
    hw = ctr * p["body_w"] / 2
    heart = _soft(_ell(u, v, 0.5 + 0.3 * hw, p["dome_base"] - 0.11, hw, 0.15 * mag), 0.04)
    img = np.maximum(img, (0.5 + 0.05 * rng.random()) * heart * body)
    # ribs (posterior, curved) and clavicles
    s = np.abs(u - 0.5)
    phase = (v - 0.17 + 0.5 * s - 2.2 * s ** 2) / p["rib_step"]  # posterior ribs: up, then down laterally
    dist = (phase - np.round(phase)) * p["rib_step"]
    rib = np.exp(-(dist / 0.011) ** 2) * (phase > -0.5) * (phase < 9.5) * (s > 0.04) * (s < p["body_w"] / 2)
    img += 0.12 * rib * body
    cl = 0.13 if view == "PA" else 0.1
    clav = _segments(u, v, [(0.47, cl + 0.02, 0.26, cl, 1.0), (0.53, cl + 0.02, 0.74, cl, 1.0)], 0.012)
    img += 0.18 * clav
    # findings
    lungs = lung_mask > 0.5

    def lung_point(zone: tuple[float, float] = (0.25, 0.68)) -> tuple[float, float, int]:
        for _ in range(50):
            side = int(rng.choice([-1, 1]))
            pu = 0.5 + side * (p["lung_sep"] + rng.uniform(-0.5, 0.5) * p["lung_w"])
            pv = rng.uniform(*zone)
            iu = int(np.clip((pu + p["shift_u"]) * (n - 1), 0, n - 1))
            iv = int(np.clip((pv + p["shift_v"]) * (n - 1), 0, n - 1))
            if lungs[iv, iu] and heart[iv, iu] < 0.5:
                return pu, pv, side
        return 0.5 - p["lung_sep"], 0.4, -1

    if "Effusion" in labels:
        for side in ([p["eff_side"]] if rng.random() < 0.7 else [-1, 1]):
            cu, a, dome = domes[0 if side == -1 else 1]
            level = rng.uniform(0.1, 0.16)
            lateral = np.clip((u - cu) * side / a, 0, 1.2)
            fluid = (v > dome - level - 0.08 * lateral) & ((u - 0.5) * side > 0.03)
            img = np.where(fluid & (lung_mask > 0.2), np.maximum(img, 0.42), img)
    if "Atelectasis" in labels:
        pu = 0.5 + p["atelectasis_side"] * (p["lung_sep"] + 0.02)
        pv = p["dome_base"] - 0.12
        img += 0.2 * _segments(u, v, [(pu - 0.07, pv + 0.02, pu + 0.07, pv - 0.015, 1.0)], 0.012) * lungs
    if "Nodule" in labels:
        for _ in range(int(rng.integers(1, 4))):
            pu, pv, _ = lung_point()
            r = rng.uniform(0.016, 0.028)
            img += 0.24 * _soft(_ell(u, v, pu, pv, r, r), 0.25)
    if "Mass" in labels:
        pu, pv, _ = lung_point()
        r = rng.uniform(0.05, 0.08)
        img += 0.3 * _soft(_ell(u, v, pu, pv, r, r * rng.uniform(0.85, 1.1)), 0.12)
    if "Infiltration" in labels:
        field = _smooth_noise(rng, n, 9)
        zone = _soft(_ell(u, v, 0.5 + p["inf_side"] * p["lung_sep"], rng.uniform(0.4, 0.6), 0.16, 0.2), 0.3)
        img += 0.18 * np.clip(field, 0, 1) * zone * lung_mask
    if "Consolidation" in labels:
        pu, pv, _ = lung_point((0.45, 0.62))
        img += 0.3 * _soft(_ell(u, v, pu, pv, rng.uniform(0.08, 0.11), rng.uniform(0.07, 0.1)), 0.1) * lung_mask
    if "Pneumonia" in labels:
        pu, pv, _ = lung_point((0.45, 0.65))
        patch = _soft(_ell(u, v, pu, pv, 0.07, 0.06), 0.5) * (0.6 + 0.4 * _smooth_noise(rng, n, 14))
        img += 0.24 * np.clip(patch, 0, 1) * lung_mask
    if "Edema" in labels:
        for hu, hv in hila:
            img += 0.2 * np.exp(-(((u - hu) / 0.1) ** 2 + ((v - hv) / 0.12) ** 2)) * lung_mask
    if "Fibrosis" in labels:
        net = (np.abs(np.sin(u * n * 0.9 + 3 * _smooth_noise(rng, n, 6))) < 0.25) | \
              (np.abs(np.sin(v * n * 0.9 + 3 * _smooth_noise(rng, n, 6))) < 0.25)
        img += 0.12 * net * lung_mask * (v < 0.45)
    if "Pleural_Thickening" in labels:
        side = p["pt_side"]
        cu = 0.5 + side * p["lung_sep"]
        lvl = _ell(u, v, cu, 0.47, p["lung_w"], p["lung_h"])
        rim = (lvl > 0.72) & (lvl < 1.0) & (((u - cu) * side > 0.02) | (v < 0.3))
        img += 0.2 * rim * (lung_mask > 0.3)
    if "Hernia" in labels:
        cv = p["dome_base"] - 0.05
        r = rng.uniform(0.045, 0.06)
        inside = _ell(u, v, 0.5, cv, r * 1.2, r) < 1
        img = np.where(inside & (v < cv), 0.16, np.where(inside, np.maximum(img, 0.62), img))
    img = _blur(img, 1)
    img = img ** p["gamma"] + rng.normal(0, 0.012, img.shape)
    return np.clip(img, 0, 1)


def _patient(rng: np.random.Generator) -> dict:
    return {"body_w": rng.uniform(0.78, 0.9), "lung_sep": rng.uniform(0.18, 0.2), "lung_w": rng.uniform(0.15, 0.17),
            "lung_h": rng.uniform(0.27, 0.32), "dome_base": rng.uniform(0.74, 0.8), "dome_amp": rng.uniform(0.05, 0.08),
            "ctr": rng.uniform(0.4, 0.48), "rib_step": rng.uniform(0.055, 0.065), "shift_u": rng.uniform(-0.02, 0.02),
            "shift_v": rng.uniform(-0.02, 0.02), "gamma": rng.uniform(0.85, 1.15),
            "atelectasis_side": int(rng.choice([-1, 1])), "ptx_side": int(rng.choice([-1, 1])),
            "eff_side": int(rng.choice([-1, 1])), "inf_side": int(rng.choice([-1, 1])),
            "pt_side": int(rng.choice([-1, 1]))}


def write_chestxray14_phantom(root: str | Path, n_patients: int = 150, image_size: int = 128, seed: int = 0,
                              test_fraction: float = 0.2, csv_variant: str = "v2020") -> Path:
    """Write the phantom at ``root`` (see the module docstring); ``csv_variant`` ``v2020`` writes
    ``Data_Entry_2017_v2020.csv``, ``2017`` writes ``Data_Entry_2017.csv`` with its trailing empty column."""
    if csv_variant not in ("v2020", "2017"):
        raise ValueError(f"csv_variant={csv_variant!r}: expected 'v2020' or '2017'")
    root, n = Path(root), int(image_size)
    names, probs = combination_probabilities()
    follow = np.array(REAL_IMAGES_PER_PATIENT, float)
    rng = np.random.default_rng(seed)
    test_patients = set((rng.permutation(n_patients)[: max(1, round(test_fraction * n_patients))] + 1).tolist())
    lines, lists = [], {"train_val": [], "test": []}
    for pid in range(1, n_patients + 1):
        prng = np.random.default_rng([seed, pid])
        patient = _patient(prng)
        age, sex = int(prng.integers(18, 90)), str(prng.choice(["M", "F"]))
        combo = None
        folder = root / f"images_{1 + (pid - 1) * 2 // n_patients:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for fu in range(int(prng.choice(len(follow), p=follow / follow.sum())) + 1):
            if combo is None or prng.random() >= KEEP_LABELS_P:
                combo = names[int(prng.choice(len(names), p=probs))]
            view = "PA" if prng.random() < 0.6 else "AP"
            img = draw_radiograph(patient, set(combo.split("|")), view, n, np.random.default_rng([seed, pid, fu]))
            name = f"{pid:08d}_{fu:03d}.png"
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(folder / name, compress_level=1)
            spacing = 0.143 * 2500 / n
            fields = [name, combo, fu, pid, age + fu // 3, sex, view, n, n, f"{spacing:.6g}", f"{spacing:.6g}"]
            lines.append(",".join(str(f) for f in fields) + ("," if csv_variant == "2017" else ""))
            lists["test" if pid in test_patients else "train_val"].append(name)
    csv_name = "Data_Entry_2017_v2020.csv" if csv_variant == "v2020" else "Data_Entry_2017.csv"
    header = HEADER_V2020 + ("," if csv_variant == "2017" else "")
    (root / csv_name).write_text("\n".join([header, *lines]) + "\n")
    for split, file in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
        (root / file).write_text("".join(f"{x}\n" for x in sorted(lists[split])))
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic ChestX-ray14 dataset (CSV, PNGs, lists).")
    parser.add_argument("--root", default="data/phantom/ChestX-ray14", help="ChestX-ray14 folder to write")
    parser.add_argument("--patients", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_chestxray14_phantom(args.root, args.patients, args.image_size, args.seed)
    n_rows = len((root / "Data_Entry_2017_v2020.csv").read_text().splitlines()) - 1
    print(f"wrote synthetic ChestX-ray14 phantom ({args.patients} patients, {n_rows} images) to {root}")


if __name__ == "__main__":
    main()
