"""Retrieval grids every few epochs: fixed queries (and the worst ones) with their top-k, framed by relevance."""
from __future__ import annotations

from typing import List, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from callbacks.figures import RetrievalRow, retrieval_figure, save_and_log, spread
from callbacks.provenance import model_epoch
from callbacks.retrieval_evaluation import Neighbours, RetrievalEvaluation


class AfterRetrievalEvaluation(Callback):
    """Base of callbacks that reuse the neighbours found by :class:`RetrievalEvaluation` in the same epoch.

    Must come after it in ``trainer.callbacks`` (checked at setup). Subclasses implement :meth:`on_results`,
    called on every rank once per new evaluation of a stage (``val`` or ``test``): in ``fit`` on epochs
    ``every_n_epochs``, 2 x ``every_n_epochs``, ...; always in ``validate`` and ``test``.
    """

    def __init__(self, every_n_epochs: int = 1):
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs}: expected >= 1")
        self.every_n_epochs = every_n_epochs
        self._seen: dict = {}

    def evaluation(self, trainer: pl.Trainer) -> RetrievalEvaluation:
        for cb in trainer.callbacks:
            if isinstance(cb, RetrievalEvaluation):
                return cb
            if cb is self:
                break
        raise ValueError(f"{type(self).__name__} needs a callbacks.RetrievalEvaluation listed before it in "
                         f"trainer.callbacks (it reuses that callback's search results)")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.evaluation(trainer)

    def _maybe_run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.sanity_checking:
            return
        nb = self.evaluation(trainer).neighbours.get(stage)
        if nb is None or self._seen.get(stage) is nb:
            return  # the evaluation did not run this epoch
        self._seen[stage] = nb
        if trainer.state.fn == "fit" and (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.on_results(trainer, pl_module, stage, nb)

    def on_results(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, nb: Neighbours) -> None:
        raise NotImplementedError

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_run(trainer, pl_module, "test")

    @staticmethod
    def rows(trainer: pl.Trainer, nb: Neighbours, queries: List[int], k: int,
             label_key: str = "label") -> List[RetrievalRow]:
        """Figure rows for ``queries`` (positions in the query split) from the stored neighbours; labels shown
        by the DataModule's ``class_names``, and a sample's ``box`` (e.g. the lesion) outlined."""
        dm = trainer.datamodule
        names = getattr(dm, "class_names", None) or {}
        q_ds, g_ds = dm.retrieval_dataset(nb.query_split), dm.retrieval_dataset(nb.gallery_split)
        out = []
        for q in queries:
            keep = [j for j in range(min(k, nb.indices.shape[1])) if nb.indices[q, j] >= 0]
            sample = q_ds[q]
            label = sample.get(label_key)
            title = f"query {nb.query_split}[{q}]" + (f"\n{label_name(label, names)}" if label is not None else "")
            gallery = [g_ds[int(nb.indices[q, j])] for j in keep]
            boxes = [s.get("box") for s in (sample, *gallery)]
            out.append(RetrievalRow(
                query=sample["image"], title=title, retrieved=[g["image"] for g in gallery],
                relevant=[bool(nb.relevance[q, j] > 0) for j in keep],
                distances=[float(nb.distances[q, j]) for j in keep],
                notes=[label_name(g.get(label_key), names) if g.get(label_key) is not None else "" for g in gallery],
                boxes=boxes if any(b is not None for b in boxes) else None))
        return out


def label_name(label, names: Optional[dict] = None) -> str:
    """``liver`` / ``lung`` from a class index, ``cardiomegaly, effusion`` from a multi-hot vector (by
    ``names``); ``label 3`` / ``label 1,4`` when a class has no name."""
    names = names or {}
    t = torch.as_tensor(label)
    ids = [int(t.item())] if t.numel() == 1 else t.nonzero().flatten().tolist()
    if ids and all(i in names for i in ids):
        return ", ".join(names[i] for i in ids)
    return "label " + ",".join(str(i) for i in ids)


class RetrievalGrid(AfterRetrievalEvaluation):
    """Every ``every_n_epochs``: ``n_queries`` fixed queries (evenly spread over the query split) and the
    ``n_worst`` queries with the lowest P@k, each with its top-``k``; relevant retrieved images framed green,
    others red, the distance under each. PNG in ``<run>/figures/`` and an image in W&B / TensorBoard
    (key ``<stage>/retrieval_grid``)."""

    def __init__(self, n_queries: int = 4, n_worst: int = 2, k: int = 5, every_n_epochs: int = 1):
        super().__init__(every_n_epochs)
        self.n_queries, self.n_worst, self.k = n_queries, n_worst, k
        self.last_path: Optional[str] = None

    def choose_queries(self, nb: Neighbours) -> List[int]:
        fixed = spread(nb.indices.shape[0], self.n_queries)
        precision = (nb.relevance[:, : self.k] > 0).float().mean(1)
        order = torch.argsort(precision, stable=True).tolist()
        worst = [q for q in order if q not in fixed][: self.n_worst]
        return fixed + worst

    def on_results(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, nb: Neighbours) -> None:
        fig = None
        if trainer.is_global_zero:
            rows = self.rows(trainer, nb, self.choose_queries(nb), self.k)
            fig = retrieval_figure(rows, nb.distance, f"{stage}: {nb.query_split} queries vs {nb.gallery_split}, "
                                   f"epoch {model_epoch(trainer)} (last {self.n_worst} rows: worst P@{self.k})")
        path = save_and_log(trainer, fig, f"retrieval_{stage}_epoch{model_epoch(trainer):03d}",
                            f"{stage}/retrieval_grid")
        self.last_path = str(path) if path else None
