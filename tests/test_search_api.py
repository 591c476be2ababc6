"""The JSON API (FastAPI TestClient): every endpoint, every bad upload answered with a clear 4xx, and the
server still answering afterwards."""
from __future__ import annotations

import io
import json
import struct
import zlib

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from search.app import create_app  # noqa: E402
from tests.search_fixtures import K, service, shipped_file  # noqa: E402


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app(service()))


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side: int = 20000) -> bytes:
    """A valid grey PNG of side x side zero pixels (side a multiple of 500): ~400 KB decoding to side^2 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = 500  # identical blocks, each ended by a full flush, compress to identical bytes: repeat them
    block = b"\0" * ((side + 1) * rows)
    comp = zlib.compressobj(9)
    head = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    repeat = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(side // rows):
        adler = zlib.adler32(block, adler)
    idat = head + repeat * (side // rows - 1) + b"\x03\x00" + adler.to_bytes(4, "big")  # empty final block
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _search(client, name, data, **form):
    return client.post("/api/search", files={"file": (name, data)}, data={"k": str(K), **form})


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\">" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from outside
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/..%2Fapp.py").status_code == 404
    assert client.get("/static/index.html").status_code == 404


def test_info_item_thumbnail(client):
    from tests.search_fixtures import ct_index

    info = client.get("/api/info").json()
    n_items = len(json.loads((ct_index()[0] / "metadata.json").read_text()))
    assert info["n_items"] == n_items and info["search_space"] == "euclidean" and "liver" in info["labels"]
    item = client.get("/api/items/3").json()
    assert item["id"] == 3 and item["patient_id"] and item["source"].endswith(".nii.gz")
    png = client.get("/api/items/3/thumbnail.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    for bad in ("25", "-1", "..%2F..%2Fetc%2Fpasswd", "1e3"):
        assert client.get(f"/api/items/{bad}/thumbnail.png").status_code in (404, 422), bad
        assert client.get(f"/api/items/{bad}").status_code in (404, 422), bad


def test_search_filters_and_explain(client):
    dcm = shipped_file("CT_small.dcm").read_bytes()
    r = _search(client, "CT_small.dcm", dcm)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == K and body["query"]["patient_id"] == "1CT1"
    other = _search(client, "q.dcm", dcm, patient="0", patients="other").json()["results"]
    assert len(other) == K and all(x["patient_id"] != "0" for x in other)
    same = _search(client, "q.dcm", dcm, patient="0", patients="same", label="liver").json()["results"]
    assert same and all(x["patient_id"] == "0" and x["label_names"] == ["liver"] for x in same)
    cropped = _search(client, "q.dcm", dcm, crop="0.2,0.2,0.8,0.8").json()["results"]
    assert len(cropped) == K and cropped != body["results"]
    ex = client.post("/api/explain", json={"token": body["query"]["token"], "id": body["results"][0]["id"]})
    assert ex.status_code == 200 and ex.json()["query"].startswith("data:image/png;base64,")
    assert client.post("/api/explain", json={"token": "nope", "id": 0}).status_code == 404
    assert client.post("/api/explain", json={"token": body["query"]["token"], "id": 999}).status_code == 404


def test_search_by_embedding(client):
    svc = service()
    emb = svc.index.index.reconstruct(7)
    r = client.post("/api/search/embedding", json={"embedding": emb.tolist(), "k": 3})
    assert r.status_code == 200 and r.json()["results"][0]["id"] == 7
    assert client.post("/api/search/embedding", json={"embedding": [1.0, 2.0], "k": 3}).status_code == 422
    assert client.post("/api/search/embedding", json={"embedding": emb.tolist(), "k": 0}).status_code == 422


def _bad_inputs():
    truncated = shipped_file("MR_truncated.dcm")
    five_d = nib.Nifti1Image(np.zeros((8, 8, 3, 2, 2), np.float32), np.eye(4)).to_bytes()
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(jpeg, "JPEG")
    cases = [("text.dcm", b"patient notes, not an image\n" * 20, 422, "not a readable DICOM"),
             ("one.png", _png(np.zeros((1, 1), np.uint8)), 422, "at least"),
             ("bomb.png", bomb_png(), 413, "decompression bomb"),
             ("five.nii", five_d, 422, "5-D NIfTI"),
             ("notes.txt", b"hello", 415, "unsupported file type"),
             ("fake.png", jpeg.getvalue(), 415, "not PNG"),
             ("empty.jpg", b"", 422, "not a readable")]
    if truncated is not None:
        cases.insert(0, ("MR_truncated.dcm", truncated.read_bytes(), 422, "cannot decode the DICOM pixel data"))
    return cases


def test_bad_uploads_get_clear_4xx_and_server_keeps_serving(client):
    for name, data, status, message in _bad_inputs():
        r = _search(client, name, data)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert message in r.json()["detail"], (name, r.json())
    dcm = shipped_file("CT_small.dcm").read_bytes()
    for form, status in (({"k": "0"}, 422), ({"k": "1000"}, 422), ({"crop": "0.5,0.5,0.4,0.9"}, 422),
                         ({"crop": "a,b"}, 422), ({"patients": "same"}, 200), ({"patients": "sideways"}, 422),
                         ({"slice": "3"}, 422)):
        assert _search(client, "CT_small.dcm", dcm, **form).status_code == status, form
    assert client.post("/api/search", data={"k": "3"}).status_code == 422  # no file
    assert _search(client, "CT_small.dcm", dcm).status_code == 200  # still serving


def test_upload_size_limit():
    import copy

    from search.query import UploadLimits

    svc = copy.copy(service())  # the same loaded index and model, a smaller upload limit
    svc.limits = UploadLimits(max_bytes=20_000)
    small = TestClient(create_app(svc))
    big = shipped_file("CT_small.dcm").read_bytes() + b"\0" * 200_000
    r = small.post("/api/search", files={"file": ("big.dcm", big)})  # refused from Content-Length
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = small.post("/api/search", files={"file": ("big.dcm", big[:50_000])})  # refused while reading
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]


def test_nifti_upload_with_slice(client):
    from tests.search_fixtures import ct_phantom

    volume = next((ct_phantom() / "imagesTs").glob("*.nii.gz"), None) or next(
        (ct_phantom() / "imagesTr").glob("*.nii.gz"))
    data = volume.read_bytes()
    n_slices = nib.load(volume).shape[-1]  # the phantom's scan length varies per patient
    body = _search(client, "volume.nii.gz", data, slice="5").json()
    assert body["query"]["kind"] == "nifti" and body["query"]["n_slices"] == n_slices and body["query"]["slice"] == 5
    assert len(body["results"]) == K
    assert _search(client, "volume.nii.gz", data, slice=str(n_slices)).status_code == 422
    assert _search(client, "volume.nii.gz", data[: len(data) // 2]).status_code == 422  # truncated gzip
