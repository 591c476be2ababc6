"""A loaded index + its method: embed a query file, search with filters, explain a result with RELAX."""
from __future__ import annotations

import base64
import io
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

import faiss
import numpy as np
import torch

from lightning_modules.components.relax import RELAX
from search.index import QueryBatcher, SearchIndex
from search.model import load_method
from search.preprocess import Preprocessing, display_of, model_input
from search.query import QueryImage, UploadLimits, load_query


def png_bytes(grey: np.ndarray, heat: np.ndarray | None = None, size: int | None = None) -> bytes:
    """PNG of a grey [H, W] image in [0, 1] (or uint8), with an optional RELAX heatmap blended (jet)."""
    from PIL import Image

    grey = np.asarray(grey)
    grey = grey.astype(np.float32) / 255.0 if grey.dtype == np.uint8 else np.clip(grey, 0, 1)
    rgb = np.repeat(grey[..., None], 3, -1)
    if heat is not None:
        from matplotlib import colormaps

        h = np.asarray(heat, np.float32)
        h = (h - h.min()) / max(float(h.max() - h.min()), 1e-12)
        rgb = 0.5 * rgb + 0.5 * colormaps["jet"](h)[..., :3]
    img = Image.fromarray((rgb * 255).round().astype(np.uint8))
    if size is not None and max(img.size) != size:
        scale = size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.NEAREST if scale > 1 else Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


class SearchService:
    """Everything a query needs, loaded once: the index (hash-checked), the method with the checkpoint the
    index was built with (hash-checked) and the archive's preprocessing."""

    def __init__(self, index_dir: str | Path, ckpt_path: str | None = None,
                 limits: UploadLimits | None = None, relax_masks: int = 200, max_k: int = 100,
                 threads: int = 1):
        self.index = SearchIndex.load(index_dir)
        self.manifest = self.index.manifest
        self.model = load_method(self.manifest, index_dir, ckpt_path)
        self.prep = Preprocessing.from_dict(self.manifest["preprocessing"])
        self.threads = threads
        self.batcher = QueryBatcher(self.index, threads=threads)
        self.limits, self.max_k = limits or UploadLimits(), max_k
        self.relax = RELAX(num_masks=relax_masks, mask_batch_size=min(relax_masks, 50), seed=0)
        self._queries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    # -- queries -----------------------------------------------------------------------------------
    def load(self, data: bytes, filename: str, slice_index: int | None = None) -> QueryImage:
        return load_query(data, filename, slice_index, self.limits)

    @torch.no_grad()
    def embed(self, image: torch.Tensor) -> np.ndarray:
        return self.model.embed(image[None]).float()[0].numpy()

    def item(self, item_id: int) -> dict:
        if not 0 <= item_id < len(self.index):
            raise KeyError(f"item {item_id} not in the index (0..{len(self.index) - 1})")
        return self.index.metadata[item_id]

    def search_embedding(self, embedding: np.ndarray, k: int = 10, patient: str | None = None,
                         patients: str = "all", label: str | None = None) -> list[dict]:
        """Ranked results (rank, id, distance + the item's metadata) for one embedding."""
        if not 1 <= k <= self.max_k:
            raise ValueError(f"k={k}: expected 1 <= k <= {self.max_k}")
        allowed = self.index.allowed(patient, patients, label)
        faiss.omp_set_num_threads(self.threads)  # per thread (web requests run in a thread pool)
        hits = self.batcher.search(embedding, k) if allowed is None else self.index.search(embedding, k, allowed)
        return [{"rank": r + 1, "distance": h.distance, **self.index.metadata[h.id]} for r, h in enumerate(hits)]

    def search_file(self, data: bytes, filename: str, k: int = 10, slice_index: int | None = None,
                    crop=None, patient: str | None = None, patients: str = "all", label: str | None = None,
                    previews: bool = False) -> dict:
        """Load, preprocess (as the archive), embed and search one query file."""
        query = self.load(data, filename, slice_index)
        image = model_input(query, self.prep, crop, self.limits.min_side)
        patient = patient if patient else (query.meta.get("patient_id") or None)
        results = self.search_embedding(self.embed(image), k, patient, patients, label)
        out = {"query": {"file": filename, "kind": query.kind, "unit": query.unit, "n_slices": query.n_slices,
                         "slice": query.slice_index, "height": int(query.pixels.shape[0]),
                         "width": int(query.pixels.shape[1]), "patient_id": query.meta.get("patient_id", ""),
                         "modality": query.meta.get("modality", ""), "token": self.remember(image)},
               "search_space": self.index.search_space, "results": results}
        if previews:
            out["query"]["display"] = data_url(png_bytes(display_of(query, self.prep), size=384))
            out["query"]["model_input"] = data_url(png_bytes(image.mean(0).numpy(), size=192))
        return out

    def remember(self, image: torch.Tensor, keep: int = 64) -> str:
        """Keep a preprocessed query in memory (never on disk) for explanations; returns its token."""
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._queries[token] = image
            while len(self._queries) > keep:
                self._queries.popitem(last=False)
        return token

    # -- archive items -----------------------------------------------------------------------------
    def item_image(self, item_id: int) -> torch.Tensor:
        """The item's 8-bit model input, as the model sees it: [C, S, S] in [0, 1]."""
        self.item(item_id)
        grey = torch.from_numpy(np.array(self.index.thumbnails[item_id], np.float32) / 255.0)
        return grey[None].expand(self.prep.channels, -1, -1).contiguous()

    def thumbnail_png(self, item_id: int) -> bytes:
        self.item(item_id)
        return png_bytes(np.asarray(self.index.thumbnails[item_id]))

    # -- explanation -------------------------------------------------------------------------------
    def explain(self, token: str, item_id: int) -> dict:
        """RELAX importance (Wickstrøm et al. 2021, eq. 4) of the query and of one result, as PNG overlays."""
        with self._lock:
            query = self._queries.get(token)
        if query is None:
            raise KeyError("unknown or expired query token; search again")
        item = self.item_image(item_id)
        if item.shape[-1] != query.shape[-1]:
            item = torch.nn.functional.interpolate(item[None], size=query.shape[-2:], mode="bilinear")[0]
        with torch.no_grad():
            result = self.relax.explain(self.model.embed, torch.stack([query, item]))
        imp = result.importance.numpy()
        return {"id": item_id, "num_masks": self.relax.num_masks,
                "query": data_url(png_bytes(query.mean(0).numpy(), imp[0], size=256)),
                "result": data_url(png_bytes(item.mean(0).numpy(), imp[1], size=256))}
