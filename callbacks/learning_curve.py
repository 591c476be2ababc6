"""Evidence that a run learns: the untrained value before step 1, a curve of the metric and the loss, and the
equal-steps control whose weights never move.

* :class:`UntrainedBaseline`: before the first optimiser step, runs the retrieval protocol once and logs it at
  step 0 under the usual ``val/...`` keys (so ``metrics.csv`` starts with the untrained value) and in
  ``metrics.json`` as the ``baseline`` section.
* :class:`LearningCurve`: ``<run>/figures/learning_curve.png``, the monitored metric (step 0 included) and
  the training loss against the optimiser step, redrawn after every evaluation and at the end of training.
* :class:`FrozenWeights`: the equal-steps control. Same batches and optimiser steps, but every parameter is
  restored after each step, so only buffers (BatchNorm running statistics) change, and those alone change
  retrieval. A gain is evidence of learning only when it beats this control.
"""
from __future__ import annotations

import logging
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402

from callbacks.figures import save_and_log  # noqa: E402
from callbacks.io import run_dir, update_json  # noqa: E402
from callbacks.retrieval_evaluation import RetrievalEvaluation  # noqa: E402

log = logging.getLogger(__name__)


def _evaluation(trainer: pl.Trainer, who: str) -> RetrievalEvaluation:
    for cb in trainer.callbacks:
        if isinstance(cb, RetrievalEvaluation):
            return cb
    raise ValueError(f"{who} needs a callbacks.RetrievalEvaluation in trainer.callbacks")


class UntrainedBaseline(Callback):
    """Evaluates the untrained model (the retrieval protocol of ``RetrievalEvaluation``, validation split)
    at the start of ``fit``, before any optimiser step; skipped when resuming (global step > 0).

    Logged to every logger at step 0 with the same keys as later epochs (``val/mP@5`` ...), written to
    ``metrics.json`` as ``{"baseline": {"global_step": 0, "metrics": {...}}}`` and kept in :attr:`results`.
    """

    def __init__(self):
        self.results: dict[str, float] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0:
            return
        evaluation = _evaluation(trainer, "UntrainedBaseline")
        with torch.random.fork_rng(devices=[]):  # loaders draw seeds: leave training's random stream as it was
            self.results = evaluation.evaluate(trainer, pl_module, "val")
        counts = {k: v for k, v in evaluation.last_results.get("val", {}).items() if k not in self.results}
        for logger in trainer.loggers:
            logger.log_metrics(self.results, step=0)
        folder = run_dir(trainer)
        if trainer.is_global_zero:
            update_json(folder / evaluation.metrics_filename, "baseline",
                        {"epoch": 0, "global_step": 0, "metrics": {**self.results, **counts}})
            shown = ", ".join(f"{k} {v:.4f}" for k, v in list(self.results.items())[:6])
            log.warning("untrained baseline (step 0): %s", shown)


class LearningCurve(Callback):
    """``<run>/figures/learning_curve.png``: ``metric`` (left axis, with the step-0 value of an
    :class:`UntrainedBaseline` when there is one) and ``loss`` (right axis, every ``loss_every`` steps and
    smoothed over ``smooth`` points) against the optimiser step. ``control`` draws a horizontal line at the
    final value of an equal-steps control run, when known (e.g. from its metrics.json)."""

    def __init__(self, metric: str = "val/mP@5", loss: str = "train/loss", loss_every: int = 1, smooth: int = 5,
                 control: Optional[float] = None):
        self.metric, self.loss, self.loss_every, self.smooth = metric, loss, max(1, loss_every), max(1, smooth)
        self.control = control
        self.metric_points: list[tuple[int, float]] = []
        self.loss_points: list[tuple[int, float]] = []
        self.path: Optional[str] = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        value = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if value is not None and trainer.global_step % self.loss_every == 0:
            self.loss_points.append((trainer.global_step, float(torch.as_tensor(value).detach().float())))

    def on_train_start(self, trainer, pl_module) -> None:
        for cb in trainer.callbacks:
            if isinstance(cb, UntrainedBaseline) and self.metric in cb.results:
                self.metric_points = [(0, cb.results[self.metric])]

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is not None and (not self.metric_points or self.metric_points[-1][0] != trainer.global_step):
            self.metric_points.append((trainer.global_step, float(value)))
            self.draw(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.draw(trainer)

    def figure(self, title: str = "") -> plt.Figure:
        fig, left = plt.subplots(figsize=(6.4, 3.8))
        if self.metric_points:
            steps, values = zip(*self.metric_points)
            left.plot(steps, values, "o-", color="#1f77b4", label=self.metric)
            left.axhline(values[0], color="#1f77b4", ls=":", lw=1, label=f"{self.metric} at step 0")
        if self.control is not None:
            left.axhline(self.control, color="#7f7f7f", ls="--", lw=1, label="equal-steps control (frozen weights)")
        left.set_xlabel("optimiser step")
        left.set_ylabel(self.metric, color="#1f77b4")
        right = left.twinx()
        if self.loss_points:
            steps, values = zip(*self.loss_points)
            k = min(self.smooth, len(values))
            smooth = torch.nn.functional.avg_pool1d(torch.tensor([values]), k, 1).flatten().tolist()
            right.plot(steps, values, color="#ff7f0e", alpha=0.25, lw=1)
            right.plot(steps[k - 1:], smooth, color="#ff7f0e", label=f"{self.loss} (mean of {k})")
        right.set_ylabel(self.loss, color="#ff7f0e")
        handles = [h for ax in (left, right) for h in ax.get_legend_handles_labels()[0]]
        left.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="best")
        left.set_title(title, fontsize=9)
        fig.tight_layout()
        return fig

    def draw(self, trainer: pl.Trainer) -> None:
        if not (self.metric_points or self.loss_points):
            return
        fig = self.figure(f"{trainer.lightning_module.__class__.__name__}, step {trainer.global_step}") \
            if trainer.is_global_zero else None
        path = save_and_log(trainer, fig, "learning_curve", "train/learning_curve")
        self.path = str(path) if path else self.path


class FrozenWeights(Callback):
    """Equal-steps control: restores every parameter after each optimiser step, so only buffers (BatchNorm
    running mean / variance) change. Works for any method and optimiser (momentum, weight decay, LARS).
    Add it to any config to run the control: ``--trainer.callbacks+=callbacks.learning_curve.FrozenWeights``."""

    def on_train_start(self, trainer, pl_module):
        self._saved = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with torch.no_grad():
            for n, p in pl_module.named_parameters():
                p.copy_(self._saved[n])

    def on_train_end(self, trainer, pl_module):
        for n, p in pl_module.named_parameters():
            assert torch.equal(p.detach(), self._saved[n]), f"control weight {n} moved"


def evaluate_after_steps(model: pl.LightningModule, datamodule: pl.LightningDataModule, callbacks: list,
                         epochs: int, frozen: bool, root_dir, **trainer_kwargs) -> dict:
    """The test-split results of ``model`` after ``epochs`` of training (0: untrained), with the weights frozen
    (:class:`FrozenWeights`, the equal-steps control) or not. No logger, checkpoints or validation; the caller
    seeds and builds model and data, so untrained / control / trained start from the same state."""
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                         callbacks=[*callbacks, *([FrozenWeights()] if frozen else [])], default_root_dir=root_dir,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, **trainer_kwargs)
    if epochs:
        trainer.fit(model, datamodule=datamodule)
    return trainer.test(model, datamodule=datamodule, verbose=False)[0]
