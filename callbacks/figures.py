"""Retrieval figures: a query and its top-k per row, relevance framed, distances printed, heatmaps optional."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from callbacks.io import run_dir  # noqa: E402

RELEVANT, NOT_RELEVANT = "#1a9850", "#d73027"


@dataclass
class RetrievalRow:
    """One query: its image and title, the retrieved images with relevance and distance, optional heatmaps
    (RELAX importance, [H, W]) for the query and each retrieved image."""

    query: Tensor
    title: str
    retrieved: List[Tensor]
    relevant: List[bool]
    distances: List[float]
    heatmaps: Optional[List[Tensor]] = None  # [query, retrieved...]
    notes: List[str] = field(default_factory=list)
    boxes: Optional[List[Optional[Tensor]]] = None  # [query, retrieved...]: [x1, y1, x2, y2] pixel edges


def draw_box(ax, box: Optional[Tensor], colour: str = "#fee08b") -> None:
    """Outline a region (e.g. the DeepLesion lesion box in its crop) given in pixel-edge coordinates."""
    if box is None:
        return
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.2))


def grey(image: Tensor) -> Tensor:
    """[C, H, W] -> [H, W] for display (grey CT/X-ray images are stacked to 3 identical channels)."""
    image = image.detach().float().cpu()
    return image.mean(0) if image.dim() == 3 else image


def _frame(ax, colour: Optional[str]) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour:
            spine.set_color(colour)
            spine.set_linewidth(4)


def retrieval_figure(rows: Sequence[RetrievalRow], distance: str = "", title: str = "") -> plt.Figure:
    """Grid: per query one row (query, then top-k: green frame = relevant, red = not, distance and class name
    below; yellow outline = the row's ``boxes``, e.g. the lesion); with heatmaps a second row shows each image
    with its importance overlaid (jet: red = important)."""
    k = max(len(r.retrieved) for r in rows)
    lines = [line for r in rows for line in ([("image", r)] + ([("heat", r)] if r.heatmaps else []))]
    fig, axes = plt.subplots(len(lines), k + 1, figsize=(1.9 * (k + 1), 2.35 * len(lines)), squeeze=False)
    for (kind, row), ax_row in zip(lines, axes):
        images = [row.query, *row.retrieved]
        for j, ax in enumerate(ax_row):
            if j >= len(images):
                ax.axis("off")
                continue
            ax.imshow(grey(images[j]), cmap="gray")
            if row.boxes:
                draw_box(ax, row.boxes[j])
            if kind == "heat":
                heat = row.heatmaps[j].detach().float().cpu()
                heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
                ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                _frame(ax, None)
                continue
            if j == 0:
                _frame(ax, "#4575b4")
                ax.set_title(row.title, fontsize=8)
            else:
                rel = row.relevant[j - 1]
                _frame(ax, RELEVANT if rel else NOT_RELEVANT)
                note = f"\n{row.notes[j - 1]}" if row.notes and row.notes[j - 1] else ""
                ax.set_xlabel(f"{'relevant' if rel else 'not relevant'}\n{distance} d={row.distances[j - 1]:.3f}"
                              f"{note}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_and_log(trainer: pl.Trainer, fig: Optional[plt.Figure], name: str, key: str) -> Optional[Path]:
    """Save ``fig`` as ``<run folder>/figures/<name>.png`` and send it to W&B / TensorBoard loggers.

    Call on every rank (the run folder is a collective under DDP) with the figure on rank 0 and None
    elsewhere; only rank 0 writes and logs.
    """
    folder = run_dir(trainer) / "figures"
    if fig is None:
        return None
    path = None
    if trainer.is_global_zero:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
            elif type(logger).__name__ == "TensorBoardLogger":
                logger.experiment.add_figure(key, fig, global_step=trainer.global_step)
    plt.close(fig)
    return path


def spread(n_total: int, n: int) -> List[int]:
    """``n`` evenly spread positions in ``range(n_total)`` (deterministic query choice)."""
    if n_total <= 0 or n <= 0:
        return []
    return torch.linspace(0, n_total - 1, min(n, n_total)).round().long().unique().tolist()
