"""The index folder: FAISS index + item metadata + thumbnails + manifest, hash-checked on load.

Distances are the evaluation's (``callbacks.search``): cosine 1 - cos, Euclidean L2, Hamming bit count.
``flat`` indexes are exact (``IndexFlatIP`` on unit vectors, ``IndexFlatL2``, ``IndexBinaryFlat`` on
packed codes); ``ivf`` and ``hnsw`` are approximate, with their recall@10 against
:func:`callbacks.search.exact_topk` measured when built and stored in the manifest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from callbacks.io import atomic_write
from callbacks.search import exact_topk, prepare

log = logging.getLogger(__name__)
FORMAT = "medcbir-search-index/1"
INDEX_KINDS = ("flat", "ivf", "hnsw")
FILES = ("index.faiss", "metadata.json", "thumbnails.npy")


class IndexMismatch(ValueError):
    """The index folder, checkpoint or configuration does not match the manifest."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(manifest: dict) -> str:
    """Hash of everything that decides an embedding: method, its arguments, checkpoint, preprocessing,
    search space and the indexed files."""
    keys = ("format", "method", "model_init_args", "checkpoint_sha256", "preprocessing", "search_space",
            "embedding_dim", "index", "files", "n_items")
    text = json.dumps({k: manifest.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def pack_codes(x: np.ndarray) -> np.ndarray:
    """Binary codes ({0,1} or {-1,+1}, checked) -> uint8 packed bits, padded to whole bytes with 0 bits
    (equal padding on every code leaves Hamming distances unchanged)."""
    pm1 = prepare(torch.as_tensor(x, dtype=torch.float32), "hamming")[0].numpy()
    return np.packbits(pm1 > 0, axis=1)


def to_vectors(x: np.ndarray, search_space: str) -> np.ndarray:
    """Embeddings as the FAISS index stores them (unit vectors for cosine, packed bits for hamming)."""
    x = np.asarray(x, np.float32)
    if search_space == "hamming":
        return pack_codes(x)
    if search_space == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x, np.float32)


def make_faiss_index(vectors: np.ndarray, search_space: str, kind: str, nlist: int | None, hnsw_m: int):
    """A trained, filled FAISS index of ``kind`` for ``vectors`` (from :func:`to_vectors`)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind {kind!r}: expected one of {INDEX_KINDS}")
    n, d = vectors.shape
    binary = search_space == "hamming"
    bits = d * 8
    metric = faiss.METRIC_INNER_PRODUCT if search_space == "cosine" else faiss.METRIC_L2
    if kind == "flat":
        index = faiss.IndexBinaryFlat(bits) if binary else (
            faiss.IndexFlatIP(d) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(d))
    elif kind == "hnsw":
        index = faiss.IndexBinaryHNSW(bits, hnsw_m) if binary else faiss.IndexHNSWFlat(d, hnsw_m, metric)
    else:
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))
        if binary:
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, nlist)
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlat(d, metric), d, nlist, metric)
        index.train(vectors)
        index.nprobe = max(1, nlist // 8)
    index.add(vectors)
    return index


def to_distance(raw: np.ndarray, search_space: str) -> np.ndarray:
    """FAISS scores -> the evaluation's distances (cosine 1 - ip, Euclidean sqrt of squared L2)."""
    raw = raw.astype(np.float32)
    if search_space == "cosine":
        return 1.0 - raw
    if search_space == "euclidean":
        return np.sqrt(np.maximum(raw, 0.0))
    return raw


def recall_at_10(index, embeddings: np.ndarray, vectors: np.ndarray, search_space: str,
                 n_queries: int = 500, seed: int = 0) -> float:
    """Recall@10 of an approximate index against exact search (:func:`callbacks.search.exact_topk` on the raw
    embeddings), over up to ``n_queries`` archive items used as queries: the share of the approximate top-10
    whose distance is within the exact 10th distance (so equal-distance ties count as found)."""
    n = len(embeddings)
    k = min(10, n)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n_queries, n), replace=False))
    emb = torch.as_tensor(embeddings, dtype=torch.float32)
    exact, _ = exact_topk(emb[rows], emb, k, search_space)
    raw, ids = index.search(vectors[rows], k)
    approx = np.where(ids >= 0, to_distance(raw, search_space), np.inf)
    tol = 1e-4 * np.maximum(1.0, np.abs(exact.numpy()[:, -1:]))
    return float(np.mean(approx <= exact.numpy()[:, -1:] + tol))


@dataclass
class Hit:
    id: int
    distance: float


class QueryBatcher:
    """Unfiltered searches arriving while one runs are answered together by the next FAISS call: for a flat
    index, one pass over the archive (BLAS) serves the whole batch instead of one pass per query (FAISS
    uses BLAS from ``faiss.cvar.distance_compute_blas_threshold`` queries on; ``serve`` sets it to 2)."""

    def __init__(self, index: "SearchIndex", max_batch: int = 64, threads: int = 1):
        self.index, self.max_batch, self.threads = index, max_batch, threads
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, name="search-batcher", daemon=True).start()

    def search(self, embedding: np.ndarray, k: int) -> list[Hit]:
        q = self.index.check_query(embedding)
        if k < 1:
            raise ValueError(f"k={k}: expected k >= 1")
        future: Future = Future()
        self.queue.put((q[0], k, future))
        return future.result()

    def _run(self) -> None:
        faiss.omp_set_num_threads(self.threads)  # OpenMP settings are per thread: set them in this one
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.index.search_many(np.stack([q for q, _, _ in batch]), max(k for _, k, _ in batch))
                for (_, k, future), hits in zip(batch, results):
                    future.set_result(hits[:k])
            except Exception as err:  # answer every waiting request, keep serving
                for _, _, future in batch:
                    future.set_exception(err)


class SearchIndex:
    """An index folder in memory: FAISS index, metadata (list of dicts, position = item id), thumbnails
    (uint8 [N, S, S], memory-mapped: the 8-bit model input of each item) and the manifest."""

    def __init__(self, folder: Path, manifest: dict, index, metadata: list, thumbnails: np.ndarray):
        self.folder, self.manifest, self.index = Path(folder), manifest, index
        self.metadata, self.thumbnails = metadata, thumbnails
        self.search_space = manifest["search_space"]
        self.patients = np.array([str(m.get("patient_id", "")) for m in metadata], dtype=object)
        self.labels = [m.get("label_names") or [] for m in metadata]

    def __len__(self) -> int:
        return len(self.metadata)

    # -- writing -----------------------------------------------------------------------------------
    @classmethod
    def build(cls, folder: Path, embeddings: np.ndarray, metadata: list, thumbnails: np.ndarray,
              search_space: str, manifest: dict, kind: str = "flat", nlist: int | None = None,
              nprobe: int | None = None, hnsw_m: int = 32, ef_search: int = 64) -> "SearchIndex":
        """Write ``folder`` (index.faiss, metadata.json, thumbnails.npy, manifest.json) and return it loaded."""
        embeddings = np.asarray(embeddings, np.float32)
        n = len(embeddings)
        if n == 0 or len(metadata) != n or len(thumbnails) != n:
            raise ValueError(f"index of {n} embeddings with {len(metadata)} metadata rows and "
                             f"{len(thumbnails)} thumbnails: expected the same non-zero count")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        vectors = to_vectors(embeddings, search_space)
        index = make_faiss_index(vectors, search_space, kind, nlist, hnsw_m)
        params = {}
        if kind == "ivf":
            index.nprobe = nprobe or index.nprobe
            params = {"nlist": int(index.nlist), "nprobe": int(index.nprobe)}
        elif kind == "hnsw":
            index.hnsw.efSearch = ef_search
            params = {"M": hnsw_m, "efSearch": ef_search}
        build_s = time.perf_counter() - start
        info = {"kind": kind, "params": params, "build_seconds": round(build_s, 3)}
        if kind != "flat":
            info["recall@10"] = round(recall_at_10(index, embeddings, vectors, search_space), 4)
            log.warning("%s index: recall@10 against exact search = %.4f (%s)", kind, info["recall@10"], params)
        write = faiss.write_index_binary if search_space == "hamming" else faiss.write_index
        tmp = folder / ".index.faiss.tmp"
        write(index, str(tmp))
        tmp.replace(folder / "index.faiss")
        atomic_write(folder / "metadata.json", lambda f: json.dump(metadata, f))
        atomic_write(folder / "thumbnails.npy", lambda f: np.save(f, np.asarray(thumbnails, np.uint8)), mode="wb")
        manifest = {**manifest, "format": FORMAT, "search_space": search_space, "n_items": n,
                    "embedding_dim": int(embeddings.shape[1]), "index": info,
                    "files": {name: sha256_file(folder / name) for name in FILES}}
        manifest["fingerprint"] = fingerprint(manifest)
        atomic_write(folder / "manifest.json", lambda f: json.dump(manifest, f, indent=2, sort_keys=True))
        return cls.load(folder)

    # -- reading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: Path, verify: bool = True) -> "SearchIndex":
        """Load an index folder; with ``verify`` refuse it when a file or the manifest was changed."""
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: --index must be a folder written by "
                                    f"`python -m experiments index`")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise IndexMismatch(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        if verify:
            if manifest.get("fingerprint") != fingerprint(manifest):
                raise IndexMismatch(f"{path}: the manifest was edited after the index was built (its fingerprint "
                                    f"does not match); rebuild the index")
            for name, digest in manifest["files"].items():
                if sha256_file(folder / name) != digest:
                    raise IndexMismatch(f"{folder / name}: sha256 differs from the manifest; the file was changed "
                                        f"after the index was built, rebuild the index")
        read = faiss.read_index_binary if manifest["search_space"] == "hamming" else faiss.read_index
        index = read(str(folder / "index.faiss"))
        metadata = json.loads((folder / "metadata.json").read_text())
        thumbnails = np.load(folder / "thumbnails.npy", mmap_mode="r", allow_pickle=False)
        return cls(folder, manifest, index, metadata, thumbnails)

    # -- searching ---------------------------------------------------------------------------------
    def allowed(self, patient: str | None = None, patients: str = "all", label: str | None = None
                ) -> np.ndarray | None:
        """Bool mask of the items passing the filters: ``patients`` = all / same / other (relative to the
        query's ``patient``), ``label`` = a label name the item must carry. None = everything."""
        if patients not in ("all", "same", "other"):
            raise ValueError(f"patients={patients!r}: expected all, same or other")
        mask = None
        if patients != "all":
            if not patient:
                raise ValueError(f"patients={patients!r} needs the query's patient id")
            same = self.patients == str(patient)
            mask = same if patients == "same" else ~same
        if label:
            has = np.array([label in names for names in self.labels], dtype=bool)
            mask = has if mask is None else mask & has
        return mask

    def check_query(self, embedding: np.ndarray) -> np.ndarray:
        """One query embedding as float32 [1, D]; ValueError when D is not the index's."""
        q = np.asarray(embedding, np.float32).reshape(1, -1)
        if q.shape[1] != self.manifest["embedding_dim"] or not np.isfinite(q).all():
            raise ValueError(f"query embedding has {q.shape[1]} dimensions (or non-finite values); the index "
                             f"holds {self.manifest['embedding_dim']}-d embeddings")
        return q

    def _hits(self, raw: np.ndarray, ids: np.ndarray, k: int, allowed: np.ndarray | None) -> list[Hit] | None:
        """The first k allowed hits of one result row (ties: lower id first, as in evaluation); None when
        fewer than k allowed ones were retrieved."""
        dist = to_distance(raw, self.search_space)
        keep = ids >= 0
        if allowed is not None:
            keep &= allowed[np.maximum(ids, 0)]
        if keep.sum() < k:
            return None
        order = np.lexsort((ids[keep], dist[keep]))[:k]
        return [Hit(int(i), float(d)) for i, d in zip(ids[keep][order], dist[keep][order])]

    def search_many(self, embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` of several queries [B, D] in one FAISS call (one pass over a flat index for all)."""
        k = min(k, len(self))
        self._prepare_search(k)
        raw, ids = self.index.search(to_vectors(np.asarray(embeddings, np.float32), self.search_space), k)
        return [self._hits(r, i, k, None) or [] for r, i in zip(raw, ids)]

    def search(self, embedding: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[Hit]:
        """Top-``k`` items for one embedding [D] among ``allowed`` (oversampling until k allowed are found)."""
        if k < 1:
            raise ValueError(f"k={k}: expected k >= 1")
        q = to_vectors(self.check_query(embedding), self.search_space)
        n = len(self)
        n_allowed = n if allowed is None else int(allowed.sum())
        k = min(k, n_allowed)
        if k == 0:
            return []
        want = k if allowed is None else min(n, max(4 * k, int(k * n / n_allowed * 2)))
        while True:
            self._prepare_search(want)
            raw, ids = self.index.search(q, want)
            hits = self._hits(raw[0], ids[0], k, allowed)
            if hits is not None:
                return hits
            if want >= n:
                return self._hits(raw[0], ids[0], int(((ids[0] >= 0) & allowed[np.maximum(ids[0], 0)]).sum()),
                                  allowed) or []
            want = min(n, want * 4)

    def _prepare_search(self, k: int) -> None:
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = max(int(self.manifest["index"]["params"].get("efSearch", 64)), k)
