"""Search index: exact flat search = the evaluation's exact search, approximate recall, binary codes,
manifest / hash checks, safe checkpoint loading, and the index / search command lines."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from callbacks.search import exact_topk
from search.index import IndexMismatch, SearchIndex
from tests.search_fixtures import K, ct_index, service, shipped_file


def _build(tmp_path, emb, space, kind="flat", **kw):
    n = len(emb)
    meta = [{"id": i, "patient_id": str(i % 7), "label_names": ["a" if i % 2 else "b"]} for i in range(n)]
    thumbs = np.zeros((n, 4, 4), np.uint8)
    return SearchIndex.build(tmp_path / f"{space}-{kind}", emb, meta, thumbs, space, {"method": "fake"},
                             kind=kind, **kw)


@pytest.mark.parametrize("space", ["cosine", "euclidean", "hamming"])
def test_flat_index_matches_exact_search(tmp_path, space):
    """Flat FAISS search returns the evaluation's exact top-k (callbacks.search) with its distances;
    a hashing method's codes ({0,1} here) go to IndexBinaryFlat with Hamming distances."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(300, 24, generator=g)
    if space == "hamming":
        emb = (emb > 0).float()  # a fake binary embedding (any hashing method)
    index = _build(tmp_path, emb.numpy(), space)
    assert type(index.index).__name__ == ("IndexBinaryFlat" if space == "hamming" else
                                          "IndexFlatIP" if space == "cosine" else "IndexFlatL2")
    d_ref, i_ref = exact_topk(emb[:20], emb, 10, space)
    for q in range(20):
        hits = index.search(emb[q].numpy(), 10)
        np.testing.assert_allclose([h.distance for h in hits], d_ref[q].numpy(), atol=5e-3)  # sqrt of round-off at 0
        if space != "hamming":  # Hamming has many exact ties: ids may differ among equal distances
            assert [h.id for h in hits] == i_ref[q].tolist()


@pytest.mark.parametrize("space,kind", [("cosine", "ivf"), ("euclidean", "hnsw"), ("hamming", "ivf"),
                                        ("hamming", "hnsw")])
def test_approximate_index_reports_recall(tmp_path, space, kind):
    emb = np.random.default_rng(0).normal(size=(400, 32)).astype(np.float32)
    if space == "hamming":
        emb = np.sign(emb)  # +-1 codes
    index = _build(tmp_path, emb, space, kind)
    recall = index.manifest["index"]["recall@10"]
    assert 0.3 <= recall <= 1.0, recall
    assert len(index.search(emb[0], 10)) == 10
    if kind == "ivf":  # probing every list is exact
        exact = _build(tmp_path / "all", emb, space, kind, nprobe=index.manifest["index"]["params"]["nlist"])
        assert exact.manifest["index"]["recall@10"] >= 0.99


def test_filters_and_binary_code_check(tmp_path):
    emb = np.random.default_rng(1).normal(size=(200, 8)).astype(np.float32)
    index = _build(tmp_path, emb, "euclidean")
    other = index.search(emb[0], 10, index.allowed("0", "other"))
    assert len(other) == 10 and all(index.metadata[h.id]["patient_id"] != "0" for h in other)
    same = index.search(emb[0], 50, index.allowed("0", "same", label="b"))
    assert same and all(index.metadata[h.id]["patient_id"] == "0" and "b" in index.metadata[h.id]["label_names"]
                        for h in same)
    with pytest.raises(ValueError, match="binary codes"):
        _build(tmp_path, emb, "hamming")


def test_manifest_and_hash_checks(tmp_path):
    folder, ckpt, _ = ct_index()
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] and manifest["preprocessing"]["kind"] == "hu_window"
    n_items = len(json.loads((copy / "metadata.json").read_text()))
    assert manifest["method"] == "lightning_modules.simsiam.SimSiam" and manifest["n_items"] == n_items
    SearchIndex.load(copy)
    # another preprocessing written into the manifest is refused
    edited = {**manifest, "preprocessing": {**manifest["preprocessing"], "window": [50.0, 150.0]}}
    (copy / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(IndexMismatch, match="manifest was edited"):
        SearchIndex.load(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "metadata.json").write_text((copy / "metadata.json").read_text().replace('"0"', '"9"'))
    with pytest.raises(IndexMismatch, match="metadata.json"):
        SearchIndex.load(copy)


def test_checkpoint_is_hash_checked_and_loaded_safely(tmp_path):
    from search.model import load_state_dict
    from search.service import SearchService

    folder, ckpt, _ = ct_index()
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"]["backbone.conv1.weight"] += 1
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    with pytest.raises(IndexMismatch, match="another model"):
        SearchService(folder, ckpt_path=other)

    class Payload:  # an arbitrary pickled object: never executed
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Payload()}, evil)
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict(evil)


def test_search_command_line(tmp_path, capsys):
    from search.cli import main

    folder, _, args = ct_index()
    query = shipped_file("CT_small.dcm")
    out_json, figure = tmp_path / "r.json", tmp_path / "r.png"
    main(["search", f"--index={folder}", f"--query={query}", f"--k={K}", "--exclude-patient=0",
          f"--json={out_json}", f"--figure={figure}"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["rank", "distance", "label", "patient"] and len(table) == K + 1
    results = json.loads(out_json.read_text())["results"]
    assert [r["rank"] for r in results] == list(range(1, K + 1))
    assert all(r["patient_id"] != "0" for r in results) and figure.stat().st_size > 1000
    distances = [r["distance"] for r in results]
    assert distances == sorted(distances) and distances[-1] > distances[0]
    # a config describing another preprocessing is refused
    with pytest.raises(SystemExit, match="another preprocessing"):
        main(["search", f"--index={folder}", f"--query={query}", *args, "--data.init_args.window=[50, 150]"])


def test_query_embedding_equals_archive_embedding():
    """An archive slice given back as a query (its NIfTI volume and slice) is found at distance ~0: queries
    are processed exactly like the archive."""
    svc = service()
    item = next(m for m in svc.index.metadata if m["slice"] is not None)
    data = open(item["source"], "rb").read()
    out = svc.search_file(data, "volume.nii.gz", k=1, slice_index=item["slice"])
    assert out["results"][0]["id"] == item["id"] and out["results"][0]["distance"] < 1e-3 * (
        1 + abs(svc.search_file(data, "volume.nii.gz", k=2, slice_index=item["slice"])["results"][1]["distance"]))


def test_index_a_folder_of_files(tmp_path, capsys):
    """``--index.folder``: every slice / frame of the DICOM files in a folder becomes an item, through the
    query loaders and the manifest's preprocessing; unreadable files are skipped."""
    from search.cli import main
    from search.service import SearchService

    folder = tmp_path / "archive"
    folder.mkdir()
    names = ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "MR_truncated.dcm"]
    for name in names:
        src = shipped_file(name)
        if src is None:
            pytest.skip(f"{name} not installed")
        (folder / name).write_bytes(src.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    _, ckpt, args = ct_index()
    out = tmp_path / "index"
    main(["index", *args, f"--ckpt_path={ckpt}", f"--index.folder={folder}", f"--index.out={out}"])
    svc = SearchService(out)
    assert len(svc.index) == 1 + 1 + 10  # CT, MR, 10 frames; the truncated file is skipped
    assert svc.manifest["source"] == {"folder": str(folder)}
    frames = [m for m in svc.index.metadata if m["source"].endswith("emri_small.dcm")]
    assert [m["slice"] for m in frames] == list(range(10))
    res = svc.search_file(shipped_file("emri_small.dcm").read_bytes(), "q.dcm", k=3, slice_index=4)["results"]
    assert res[0]["source"].endswith("emri_small.dcm") and res[0]["slice"] == 4 and res[0]["distance"] < 1e-3
