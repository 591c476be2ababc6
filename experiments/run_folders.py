"""Run folders that stay predictable: evaluations live beside the checkpoint they evaluate, failures leave nothing.

- ``fit`` writes ``<save_dir>/<name>/version_N/`` (Lightning's numbering); a fit that fails before leaving any
  result (no checkpoint, metrics.json, figure or predictions) removes its folder, so numbering does not drift.
- ``validate`` / ``test`` / ``predict`` need a checkpoint (``--ckpt_path``) unless ``--allow_untrained=true``.
  ``--ckpt_path best`` / ``last`` mean ``checkpoints/best.ckpt`` / ``last.ckpt`` of the newest run of the
  config. Their outputs go to ``<run>/<subcommand>_<checkpoint stem>/`` (``predict``:
  ``<run>/predict_<stem>_<split>/``), where ``<run>`` holds ``checkpoints/``. Re-running replaces that folder
  only when the new run succeeds.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from callbacks.progress import RetrievalProgressBar

EVALUATION_SUBCOMMANDS = ("validate", "test", "predict")
#: a run folder holding any of these is kept even when its run failed
RESULT_PATTERNS = ("*.ckpt", "metrics.json", "*.png", "*.npz")


class UntrainedEvaluationError(ValueError):
    """``validate`` / ``test`` / ``predict`` without a checkpoint and without ``--allow_untrained=true``."""


def logger_inits(trainer_cfg) -> list:
    """``init_args`` of every configured logger that has them (CSV / TensorBoard style loggers)."""
    loggers = trainer_cfg.get("logger")
    out = []
    for cfg in loggers if isinstance(loggers, list) else [loggers]:
        init = getattr(cfg, "init_args", None) if cfg is not None and not isinstance(cfg, bool) else None
        if init is not None and "save_dir" in init:
            out.append(init)
    return out


def newest_run(trainer_cfg) -> Optional[Path]:
    """Newest run folder (holding ``checkpoints/``) of the config's first logger."""
    from experiments.cli import latest_version

    for init in logger_inits(trainer_cfg):
        name = init.get("name") or "lightning_logs"
        version = latest_version(init.save_dir, name)
        if version is not None:
            return Path(init.save_dir) / name / version
        return None
    return None


def needs_checkpoint(cfg) -> bool:
    """False for a method with nothing to learn (``needs_checkpoint = False``, e.g. the SSIM baseline)."""
    import importlib

    class_path = getattr(cfg.get("model"), "class_path", None) if cfg.get("model") is not None else None
    try:
        module, name = str(class_path).rsplit(".", 1)
        return bool(getattr(getattr(importlib.import_module(module), name), "needs_checkpoint", True))
    except (ImportError, AttributeError, ValueError):
        return True


def resolve_checkpoint(subcommand: str, cfg) -> Optional[str]:
    """Check the checkpoint of an evaluation subcommand and resolve ``best`` / ``last``; returns the path."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        if cfg.get("allow_untrained") or not needs_checkpoint(cfg):
            return None
        raise UntrainedEvaluationError(
            f"`{subcommand}` without --ckpt_path would score the model's initial (untrained) weights. Pass "
            f"--ckpt_path=<run>/checkpoints/best.ckpt (or --ckpt_path=best / last: that file of the newest run "
            f"of this config), or --allow_untrained=true to evaluate the initial weights on purpose.")
    if ckpt in ("best", "last"):
        run = newest_run(cfg.trainer)
        path = run / "checkpoints" / f"{ckpt}.ckpt" if run is not None else None
        if path is None or not path.is_file():
            where = run / "checkpoints" if run is not None else ", ".join(
                str(Path(i.save_dir) / (i.get("name") or "")) for i in logger_inits(cfg.trainer)) or "(no logger)"
            raise FileNotFoundError(f"--ckpt_path={ckpt}: no {ckpt}.ckpt in the newest run of this config ({where}); "
                                    f"run `fit` first or pass the checkpoint file")
        cfg.ckpt_path = ckpt = str(path)
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"--ckpt_path={ckpt}: no such checkpoint file")
    return ckpt


def evaluation_folder(subcommand: str, ckpt: str, split: Optional[str] = None) -> tuple[Path, str]:
    """``(parent, folder name)`` of the outputs of evaluating ``ckpt``: beside its run's ``checkpoints/``."""
    ckpt = Path(ckpt)
    parent = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    name = f"{subcommand}_{ckpt.stem}" + (f"_{split}" if subcommand == "predict" and split else "")
    return parent, name


def place_evaluation(subcommand: str, cfg) -> Optional[Path]:
    """Point the loggers of an evaluation subcommand at :func:`evaluation_folder` (unless a version is set);
    returns that folder, or None when the config chose its own."""
    ckpt = resolve_checkpoint(subcommand, cfg)
    if ckpt is None:
        return None
    split = cfg.data.init_args.get("predict_split", "test") if subcommand == "predict" else None
    parent, name = evaluation_folder(subcommand, ckpt, split)
    inits = [i for i in logger_inits(cfg.trainer) if "version" in i and i.version is None]
    for init in inits:
        init.save_dir, init.name, init.version = str(parent), "", name
    if not logger_inits(cfg.trainer):
        cfg.trainer.default_root_dir = str(parent / name)
    elif not inits:
        return None
    return parent / name


def adapt_callbacks(trainer: pl.Trainer, subcommand: Optional[str]) -> list[str]:
    """Per subcommand: evaluations drop the training-only ``ModelCheckpoint`` callbacks (restoring their state
    from a checkpoint of another folder only warns); the default bar becomes :class:`RetrievalProgressBar`.
    Returns the monitored keys (for the summary)."""
    monitors = [cb.monitor for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor]
    if subcommand in EVALUATION_SUBCOMMANDS:
        trainer.callbacks[:] = [cb for cb in trainer.callbacks if not isinstance(cb, ModelCheckpoint)]
    for i, cb in enumerate(trainer.callbacks):
        if type(cb) is TQDMProgressBar:
            trainer.callbacks[i] = RetrievalProgressBar(refresh_rate=cb.refresh_rate, leave=cb._leave)
    return monitors


def _has_results(folder: Path) -> bool:
    return any(next(folder.rglob(p), None) is not None for p in RESULT_PATTERNS)


class RunFolder:
    """Guards one subcommand's run folder: a failed run leaves neither an empty new folder nor a half-replaced
    evaluation (the previous one is restored)."""

    def __init__(self, path: Optional[str], placed: Optional[Path] = None):
        """``path``: the trainer's run folder; ``placed``: the evaluation folder chosen by
        :func:`place_evaluation`, the only kind replaced as a whole when it exists already."""
        self.path = Path(path) if path and rank_zero_only.rank == 0 else None  # other DDP ranks: hands off
        self.replace = placed is not None and self.path is not None and self.path.resolve() == placed.resolve()
        self.existed = self.path is not None and self.path.exists()
        self.stash: Optional[Path] = None
        if self.path is not None and self.existed and self.replace:
            self.stash = self.path.with_name(f".{self.path.name}.previous")
            shutil.rmtree(self.stash, ignore_errors=True)
            self.path.rename(self.stash)

    def succeeded(self) -> None:
        if self.stash is not None:
            shutil.rmtree(self.stash, ignore_errors=True)

    def failed(self) -> None:
        if self.path is None or not self.path.exists():
            pass
        elif self.replace or (not self.existed and not _has_results(self.path)):
            shutil.rmtree(self.path, ignore_errors=True)
        if self.stash is not None:
            self.stash.rename(self.path)
