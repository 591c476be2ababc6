"""The few lines printed at the end of every ``fit`` / ``validate`` / ``test`` / ``predict``: what happened and
where everything went (run folder, best checkpoint and its score, metrics.json, figures, predictions)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from callbacks.provenance import checkpoint_provenance

HEADLINE = 4  # metrics shown when no monitored key matches


def _rel(path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.0f} MB"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _outputs(folder: Path) -> list[str]:
    lines = []
    if (folder / "metrics.json").is_file():
        lines.append(f"  metrics   {_rel(folder / 'metrics.json')}")
    figures = sorted((folder / "figures").glob("*.png")) if (folder / "figures").is_dir() else []
    if figures:
        lines.append(f"  figures   {_rel(folder / 'figures')}/ ({len(figures)} PNG, newest {figures[-1].name})")
    for npz in sorted(folder.glob("predictions_*.npz")):
        lines.append(f"  embeddings {_rel(npz)}")
    return lines


def fit_summary(trainer: pl.Trainer, folder: Path) -> list[str]:
    lines = []
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint):
            continue
        if cb.monitor and cb.best_model_path and Path(cb.best_model_path).is_file():
            score = float(cb.best_model_score) if cb.best_model_score is not None else float("nan")
            lines.append(f"  best      {_rel(cb.best_model_path)} ({_size(Path(cb.best_model_path))}): "
                         f"{cb.monitor} = {score:.4f} ({cb.mode})")
    last = next((Path(cb.last_model_path) for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, ModelCheckpoint) and cb.last_model_path and Path(cb.last_model_path).is_file()),
                None)
    if last is not None:
        lines.append(f"  last      {_rel(last)} ({_size(last)}): newest training state, resume with "
                     f"--ckpt_path last")
    return lines


def evaluation_summary(trainer: pl.Trainer, stage: str, folder: Path, monitors: Iterable[str]) -> list[str]:
    prov = checkpoint_provenance(trainer)
    if prov.get("untrained"):
        lines = ["  weights   UNTRAINED (--allow_untrained=true): initial weights, not a trained model"]
    else:
        lines = [f"  weights   {_rel(prov['path'])} (epoch {prov['epoch']}, step {prov['global_step']}, "
                 f"sha256 {prov['sha256'][:12]})"]
    metrics_file = folder / "metrics.json"
    if stage in ("val", "test") and metrics_file.is_file():
        values = json.loads(metrics_file.read_text()).get(stage, {}).get("metrics", {})
        wanted = [m.replace("val/", f"{stage}/", 1) for m in monitors]
        keys = [k for k in wanted if k in values] or [k for k in values if "/n_" not in k][:HEADLINE]
        lines.append("  scores    " + ", ".join(f"{k} = {values[k]:.4f}" for k in keys))
    return lines


def run_summary(trainer: pl.Trainer, subcommand: str, elapsed: float, monitors: Iterable[str] = (),
                folder: Optional[str] = None) -> str:
    """The end-of-run summary as text (printed by the CLI on rank 0)."""
    folder = Path(folder or trainer.log_dir or trainer.default_root_dir)
    head = f"{subcommand} finished in {_duration(elapsed)}: run folder {_rel(folder)}"
    if subcommand == "fit":
        epochs, steps = trainer.current_epoch, trainer.global_step
        head += f" ({epochs} epoch{'s' * (epochs != 1)}, {steps} step{'s' * (steps != 1)})"
        body = fit_summary(trainer, folder)
    else:
        body = evaluation_summary(trainer, {"validate": "val", "test": "test"}.get(subcommand, subcommand), folder,
                                  monitors)
    return "\n".join(["", head, *body, *_outputs(folder), ""])


def print_summary(trainer: pl.Trainer, subcommand: str, elapsed: float, monitors: Iterable[str] = ()) -> None:
    """Print :func:`run_summary` on rank 0. Call on every rank: under DDP ``trainer.log_dir`` is a collective."""
    folder = trainer.log_dir or trainer.default_root_dir
    if trainer.is_global_zero:
        print(run_summary(trainer, subcommand, elapsed, monitors, folder), flush=True)
