"""``python -m experiments {fit,validate,test,predict} --config <yaml>``: LightningCLI in subclass mode.

The model (any ``lightning_modules`` method) and the data (any ``datamodules`` family) are chosen by
``class_path`` in the config, so every method x dataset pairing is configuration only. Configs are parsed
in omegaconf mode (``${...}`` interpolation); the resolved config is saved as ``config.yaml`` in the run
folder (overwritten when re-running into the same folder) and uploaded to W&B when it is on.

Extra options on top of Lightning's:
  --wandb.enabled=true      add a W&B logger (offline by default: no account, no network) next to the CSV one
  --ckpt_path=last          resume the latest run folder of the configured logger (not a new version)
  --allow_untrained=true    validate / test / predict without --ckpt_path (scores the initial weights)

validate / test / predict require --ckpt_path (``best`` / ``last``: that file of the newest run) and write
beside the checkpoint's run (``experiments.run_folders``); every subcommand ends with a summary
(``experiments.summary``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from pathlib import Path
from typing import List, Optional

from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

from datamodules.base import RetrievalDataModule
from experiments import noise, run_folders
from experiments.errors import ReadableErrors, user_errors
from experiments.summary import print_summary
from lightning_modules.base import RetrievalModule

log = logging.getLogger(__name__)


@dataclasses.dataclass
class WandbOptions:
    """W&B logging. ``mode``: offline (runs are stored under ``<save_dir>/wandb`` and uploaded later with
    ``wandb sync``), online (needs ``wandb login``), or disabled. None = ``$WANDB_MODE`` if set, else online
    inside a sweep agent (``$WANDB_SWEEP_ID`` set), else offline: nothing ever needs an account by default."""

    enabled: bool = False
    project: str = "medcbir"
    entity: Optional[str] = None
    mode: Optional[str] = None
    name: Optional[str] = None
    tags: List[str] = dataclasses.field(default_factory=list)
    log_model: bool = False


class ConfigToLoggers(SaveConfigCallback):
    """Saves ``config.yaml`` in the run folder and uploads the resolved config to W&B loggers."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                logger.log_hyperparams(self.config.as_dict())
                run = logger.experiment
                if getattr(run, "offline", False) or getattr(getattr(run, "settings", None), "_offline", False):
                    log.warning("W&B is offline: this run is stored in %s; upload it with `wandb sync %s`",
                                Path(run.dir).parent, Path(run.dir).parent)


def latest_version(save_dir: str, name: str) -> Optional[str]:
    """Name of the newest ``version_N`` folder (or any folder holding checkpoints/last.ckpt)."""
    root = Path(save_dir) / name
    runs = [p for p in root.glob("*") if (p / "checkpoints").is_dir()] if root.is_dir() else []
    if not runs:
        return None

    def order(p: Path):
        m = re.fullmatch(r"version_(\d+)", p.name)
        return (p / "checkpoints").stat().st_mtime, int(m.group(1)) if m else -1

    return max(runs, key=order).name


class RetrievalCLI(ReadableErrors, LightningCLI):
    """LightningCLI with the project's base classes, W&B options and resume-in-place."""

    def __init__(self, args=None, run: bool = True):
        noise.install()
        self.placed_folder, self.monitors = None, []
        super().__init__(RetrievalModule, RetrievalDataModule, subclass_mode_model=True,
                         subclass_mode_data=True, seed_everything_default=0,
                         save_config_callback=ConfigToLoggers,
                         parser_kwargs={"parser_mode": "omegaconf+"},
                         save_config_kwargs={"overwrite": True}, args=args, run=run)
        if run:
            self.finish_wandb()

    def finish_wandb(self) -> None:
        """Close the W&B run at the end of the subcommand, so an offline run folder is complete (Lightning's
        logger leaves it open for notebooks) and a sweep agent sees the run end."""
        if any(isinstance(lg, WandbLogger) for lg in self.trainer.loggers):
            import wandb

            if wandb.run is not None:
                wandb.finish()

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(WandbOptions, "wandb")
        parser.add_argument("--allow_untrained", type=bool, default=False,
                            help="validate / test / predict without --ckpt_path: score the initial weights")

    def before_instantiate_classes(self) -> None:
        """``fit --ckpt_path last``: write into the run folder that holds the last checkpoint. Evaluations:
        require a checkpoint and write beside it (``run_folders.place_evaluation``)."""
        if self.subcommand in run_folders.EVALUATION_SUBCOMMANDS:
            self.placed_folder = run_folders.place_evaluation(self.subcommand, self.config[self.subcommand])
        if self.subcommand != "fit" or self.config.fit.get("ckpt_path") != "last":
            return
        loggers = self.config.fit.trainer.get("logger")
        for cfg in loggers if isinstance(loggers, list) else [loggers]:
            init = getattr(cfg, "init_args", None) if cfg is not None and not isinstance(cfg, bool) else None
            if init is None or "version" not in init or init.version is not None:
                continue
            version = latest_version(init.save_dir, init.get("name") or "lightning_logs")
            if version is not None:
                init.version = version
                log.warning("--ckpt_path last: resuming in %s", Path(init.save_dir) / (init.name or "") / version)

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        cfg = self.config_init[self.subcommand]["wandb"] if self.subcommand else self.config_init["wandb"]
        if cfg.enabled:
            mode = cfg.mode or os.environ.get("WANDB_MODE") or (
                "online" if os.environ.get("WANDB_SWEEP_ID") else "offline")
            save_dir = next((lg.save_dir for lg in trainer.loggers if lg.save_dir), trainer.default_root_dir)
            wandb_logger = WandbLogger(project=cfg.project, entity=cfg.entity, name=cfg.name, tags=cfg.tags,
                                       save_dir=save_dir, log_model=cfg.log_model, offline=mode == "offline",
                                       mode=mode)
            trainer.loggers = [*trainer.loggers, wandb_logger]
        self.monitors = run_folders.adapt_callbacks(trainer, self.subcommand)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        """Run, then print the summary; a failed run leaves no empty run folder (``run_folders.RunFolder``)."""
        guard = run_folders.RunFolder(self.trainer.log_dir, self.placed_folder)
        start = time.perf_counter()
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            guard.failed()
            raise
        guard.succeeded()
        print_summary(self.trainer, subcommand, time.perf_counter() - start, self.monitors)


def main(args=None) -> RetrievalCLI:
    with user_errors():  # a bad key, value, file or checkpoint: one line, exit status 2
        return RetrievalCLI(args=args)
