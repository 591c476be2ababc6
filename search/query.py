"""Query files -> one 2-D slice in known units: DICOM, NIfTI, PNG (8/16-bit), JPEG.

Everything is decoded from bytes in memory (uploads are never written to disk) and every size is checked
before pixels are decoded. DICOM pixels follow the standard's pipeline through pydicom: the Modality LUT
(RescaleSlope / RescaleIntercept: Hounsfield units for CT), then for other modalities the VOI LUT / window
scaled to [0, 1], and MONOCHROME1 inverted so that 1 is white.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field

import numpy as np

SUFFIXES = {".dcm": "dicom", ".dicom": "dicom", ".nii": "nifti", ".nii.gz": "nifti", ".png": "png",
            ".jpg": "jpeg", ".jpeg": "jpeg"}
DEEPLESION_HU_OFFSET = 32768  # 16-bit PNG slices store HU + 32768 (DeepLesion)


class QueryError(ValueError):
    """A query file that cannot be used; ``status`` is the HTTP status the web API answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on a query file: bytes on the wire, decoded bytes (gzip), pixels per slice, smallest side."""

    max_bytes: int = 32 * 2 ** 20
    max_decoded_bytes: int = 512 * 2 ** 20
    max_pixels: int = 40_000_000
    min_side: int = 8


@dataclass
class QueryImage:
    """One slice. ``unit``: ``hu`` (Hounsfield units), ``display`` (grey in [0, 1], 1 = white) or ``raw``
    (scanner values of unknown unit, e.g. a NIfTI volume: HU when the archive is CT)."""

    pixels: np.ndarray
    unit: str
    kind: str
    n_slices: int = 1
    slice_index: int = 0
    meta: dict = field(default_factory=dict)


def parse_crop(text: str | None, name: str) -> list[float] | None:
    """``"x0,y0,x1,y1"`` (fractions of width / height) as four floats; ``None`` for an empty value."""
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise QueryError(f"{name} {text!r}: expected x0,y0,x1,y1 as fractions of the width / height")
    return values


def file_kind(filename: str) -> str:
    """``dicom`` / ``nifti`` / ``png`` / ``jpeg`` from the file name; QueryError(415) for anything else."""
    name = (filename or "").lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return SUFFIXES[suffix]
    raise QueryError(f"{filename!r}: unsupported file type; expected one of "
                     f"{', '.join(sorted(SUFFIXES))}", status=415)


def _check_shape(name: str, height: int, width: int, limits: UploadLimits) -> None:
    if height * width > limits.max_pixels:
        raise QueryError(f"{name}: {width} x {height} pixels is more than the limit of {limits.max_pixels} "
                         f"pixels per slice (a decompression bomb or a huge scan)", status=413)
    if min(height, width) < limits.min_side:
        raise QueryError(f"{name}: {width} x {height} pixels; a query needs at least "
                         f"{limits.min_side} x {limits.min_side}")


def _pick(name: str, n: int, index: int | None) -> int:
    z = n // 2 if index is None else int(index)
    if not 0 <= z < n:
        raise QueryError(f"{name}: slice {index} out of range; the file has {n} slice(s) (0..{n - 1})")
    return z


def load_query(data: bytes, filename: str, slice_index: int | None = None,
               limits: UploadLimits = UploadLimits()) -> QueryImage:
    """Decode ``data`` (the bytes of ``filename``) into one slice; ``slice_index`` picks a frame / slice of a
    multi-frame DICOM or a NIfTI volume (default: the middle one). Raises :class:`QueryError`."""
    kind = file_kind(filename)
    if len(data) > limits.max_bytes:
        raise QueryError(f"{filename}: {len(data)} bytes is more than the upload limit of {limits.max_bytes}",
                         status=413)
    loader = {"dicom": load_dicom, "nifti": load_nifti_slice, "png": load_picture, "jpeg": load_picture}[kind]
    return loader(data, filename, slice_index, limits)


# -- DICOM ---------------------------------------------------------------------------------------------
def voi_output_range(ds) -> tuple[float, float]:
    """Output range of pydicom's ``apply_voi_lut`` for ``ds`` (PS3.3 C.11.2: the stored bit range after the
    rescale, or the VOI LUT's own bit depth), so that a VOI-transformed slice maps to [0, 1]."""
    if "VOILUTSequence" in ds and ds.VOILUTSequence:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2 ** bits - 1)
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.PixelRepresentation) == 0:
        lo, hi = 0.0, float(2 ** bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def dicom_to_units(frame: np.ndarray, ds) -> tuple[np.ndarray, str]:
    """One grey frame -> (pixels, unit): CT through the Modality LUT in HU; other modalities through the
    Modality and VOI LUTs (pydicom ``apply_modality_lut`` / ``apply_voi_lut``) to [0, 1], MONOCHROME1
    inverted. Without a window the frame's own min..max is the range."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    modality = apply_modality_lut(frame, ds)
    if str(ds.get("Modality", "")).upper() == "CT" and not ds.get("ModalityLUTSequence"):
        return np.asarray(modality, np.float32), "hu"
    has_voi = "WindowCenter" in ds or "WindowWidth" in ds or ("VOILUTSequence" in ds and ds.VOILUTSequence)
    voi = np.asarray(apply_voi_lut(modality, ds), np.float64)
    lo, hi = voi_output_range(ds) if has_voi else (float(voi.min()), float(voi.max()))
    display = np.clip((voi - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        display = 1.0 - display
    return display.astype(np.float32), "display"


def load_dicom(data: bytes, filename: str, slice_index: int | None, limits: UploadLimits) -> QueryImage:
    """A DICOM file (single or multi-frame); sizes are checked from the header before decoding pixels."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise QueryError(f"{filename}: not a readable DICOM file ({type(err).__name__}: {err})") from None
    if "PixelData" not in ds:
        raise QueryError(f"{filename}: the DICOM file holds no image (no PixelData element)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError) as err:
        raise QueryError(f"{filename}: DICOM header without valid Rows / Columns ({err})") from None
    _check_shape(filename, rows, cols, limits)
    if rows * cols * frames * 8 > limits.max_decoded_bytes:
        raise QueryError(f"{filename}: {frames} frames of {cols} x {rows} exceed the decoded size limit",
                         status=413)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for corrupt / truncated / undecodable pixel data
        raise QueryError(f"{filename}: cannot decode the DICOM pixel data ({type(err).__name__}: {err})") from None
    colour = int(ds.get("SamplesPerPixel", 1)) > 1
    if (pixels.ndim == 3 and not colour) or pixels.ndim == 4:
        n = pixels.shape[0]
    else:
        n, pixels = 1, pixels[None]
    z = _pick(filename, n, slice_index)
    frame = pixels[z]
    if colour:
        display = frame.astype(np.float32).mean(-1) / float(2 ** int(ds.BitsStored) - 1)
        pixels_out, unit = display, "display"
    elif photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise QueryError(f"{filename}: PhotometricInterpretation {photometric!r} is not supported; expected "
                         f"MONOCHROME1, MONOCHROME2 or a colour image")
    else:
        pixels_out, unit = dicom_to_units(frame, ds)
    meta = {"modality": str(ds.get("Modality", "")), "patient_id": str(ds.get("PatientID", "") or ""),
            "study_id": str(ds.get("StudyInstanceUID", "") or ""), "photometric": photometric}
    return QueryImage(pixels_out, unit, "dicom", n, z, meta)


# -- NIfTI ---------------------------------------------------------------------------------------------
def _gunzip(data: bytes, filename: str, limit: int) -> bytes:
    """Decompress with a bound on the output size (a small .gz can expand without limit)."""
    out = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        raw = out.decompress(data, limit + 1)
    except zlib.error as err:
        raise QueryError(f"{filename}: not a valid gzip file ({err})") from None
    if len(raw) > limit:
        raise QueryError(f"{filename}: decompresses to more than {limit} bytes", status=413)
    return raw


def load_nifti_slice(data: bytes, filename: str, slice_index: int | None, limits: UploadLimits) -> QueryImage:
    """An axial slice (last axis) of a 2-D or 3-D NIfTI volume, in radiological display orientation."""
    import nibabel as nib

    from datamodules.decathlon_liver import to_display

    raw = _gunzip(data, filename, limits.max_decoded_bytes) if data[:2] == b"\x1f\x8b" else data
    img = None
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            img = cls.from_bytes(raw)
            break
        except Exception:  # nibabel raises several types for a foreign header
            continue
    if img is None:
        raise QueryError(f"{filename}: not a readable NIfTI-1/2 file")
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise QueryError(f"{filename}: a {len(shape)}-D NIfTI image of shape {tuple(img.shape)}; expected a "
                         f"2-D slice or a 3-D volume (x, y, z)")
    _check_shape(filename, shape[0], shape[1], limits)
    n = shape[2] if len(shape) == 3 else 1
    z = _pick(filename, n, slice_index)
    try:
        proxy = img.dataobj
        index = (slice(None), slice(None), z) + (0,) * (len(img.shape) - 3) if len(img.shape) >= 3 else ...
        sl = np.asarray(proxy[index], np.float32)
    except Exception as err:
        raise QueryError(f"{filename}: cannot read the NIfTI voxels ({type(err).__name__}: {err}); the file is "
                         f"truncated or corrupt") from None
    sl = to_display(sl.reshape(shape[0], shape[1])[None], img.affine)[0]
    if not np.isfinite(sl).all():
        raise QueryError(f"{filename}: slice {z} holds NaN or infinite values")
    return QueryImage(sl, "raw", "nifti", n, z, {"modality": "", "patient_id": "", "study_id": ""})


# -- PNG / JPEG ----------------------------------------------------------------------------------------
def load_picture(data: bytes, filename: str, slice_index: int | None, limits: UploadLimits) -> QueryImage:
    """PNG or JPEG. 16-bit grey PNG = HU + 32768 (the DeepLesion convention); 8-bit / colour = display."""
    from PIL import Image

    if slice_index not in (None, 0):
        raise QueryError(f"{filename}: a 2-D picture has a single slice (0), got slice {slice_index}")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
    except Image.DecompressionBombError as err:
        raise QueryError(f"{filename}: {err}", status=413) from None
    except Exception as err:
        raise QueryError(f"{filename}: not a readable PNG / JPEG image ({type(err).__name__})") from None
    expected = "JPEG" if file_kind(filename) == "jpeg" else "PNG"
    if img.format != expected:
        raise QueryError(f"{filename}: the content is {img.format}, not {expected}", status=415)
    _check_shape(filename, height, width, limits)
    try:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            pixels, unit = np.asarray(img).astype(np.float32) - DEEPLESION_HU_OFFSET, "hu"
        else:
            pixels, unit = np.asarray(img.convert("L"), np.float32) / 255.0, "display"
    except Exception as err:
        raise QueryError(f"{filename}: cannot decode the image ({type(err).__name__}: {err}); truncated?") from None
    return QueryImage(pixels, unit, expected.lower(), 1, 0, {"modality": "", "patient_id": "", "study_id": ""})


def read_bounded(stream, limit: int) -> bytes:
    """Read at most ``limit`` + 1 bytes from a file object (so an oversized upload is detected, not read)."""
    chunks, size = [], 0
    while size <= limit:
        chunk = stream.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


__all__ = ["QueryError", "QueryImage", "UploadLimits", "file_kind", "load_query", "dicom_to_units",
           "voi_output_range", "read_bounded"]
