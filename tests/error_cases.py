"""The table of validated inputs: every row is a test (tests/test_errors.py) and a row of docs/errors.md.

A case runs ``call(ctx)`` and expects ``error`` with ``message`` (a literal part of the text). ``ctx`` gives
the fixtures CLI cases need (``ctx.tmp_path``, ``ctx.phantom_root``, ``ctx.cli``). Regenerate the docs
with ``python -m tests.error_cases > docs/errors.md``; a test checks they are in step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from callbacks import evaluate_retrieval, exact_topk
from callbacks.explanation_metrics import relevance_rank_accuracy


@dataclass(frozen=True)
class Case:
    entry: str          # the public entry point
    bad: str            # the bad input, in words
    call: Callable      # call(ctx) must raise ``error``
    error: type
    message: str        # a literal part of the message

    @property
    def id(self) -> str:
        return f"{self.entry}: {self.bad}"


E = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
LAB = np.array([0, 1, 0, 1, 2, 2])
T = torch.from_numpy(E)


def _nan(x, rows=(1, 3)):
    x = x.copy()
    x[list(rows), 0] = np.nan
    return x


def _ev(q=E, g=E, ql=LAB, gl=LAB, **kw):
    kw.setdefault("k_values", [1, 5])
    return lambda ctx: evaluate_retrieval(q, g, ql, gl, **kw)


EV = "evaluate_retrieval"
TOPK = "exact_topk"
RR = "relevance_rank_accuracy"

ARRAY_CASES = [
    Case(EV, "labels shorter than the embeddings", _ev(ql=LAB[:4]), ValueError,
         "query_labels: 4 entries for 6 query embeddings"),
    Case(EV, "float labels with relevance=same_label", _ev(ql=LAB.astype(float), gl=LAB.astype(float)), ValueError,
         "relevance=same_label needs integer class ids, got dtype torch.float64"),
    Case(EV, "class ids with relevance=label_overlap", _ev(relevance="label_overlap"), ValueError,
         "relevance=label_overlap needs multi-hot labels of shape [N, C classes]"),
    Case(EV, "multi-hot labels with different columns", _ev(ql=np.eye(6, 3), gl=np.eye(6, 4),
                                                            relevance="label_overlap"), ValueError,
         "must have the same shape per item"),
    Case(EV, "NaN in the labels", _ev(ql=_nan(np.eye(6, 3)), gl=np.eye(6, 3), relevance="label_overlap"),
         ValueError, "2 labels are NaN or inf"),
    Case(EV, "NaN query embeddings", _ev(q=_nan(E)), ValueError,
         "query embeddings: 2 of 6 items contain NaN or inf (rows [1, 3])"),
    Case(EV, "inf gallery embeddings", _ev(g=np.where(np.arange(6)[:, None] == 0, np.inf, E)), ValueError,
         "gallery embeddings: 1 of 6 items contain NaN or inf"),
    Case(EV, "empty query set", _ev(q=E[:0], ql=LAB[:0]), ValueError, "query embeddings: empty (0 items)"),
    Case(EV, "1-D embeddings", _ev(q=E[:, 0]), ValueError, "expected a 2-D array [N items, D dims]"),
    Case(EV, "strings instead of numbers", _ev(ql=np.array(list("abcdef"))), ValueError,
         "query_labels: expected a numeric array"),
    Case(EV, "k_values larger than the gallery", _ev(k_values=[1, 10]), ValueError,
         "k_values=[1, 10]: k=10 exceeds the gallery size 6"),
    Case(EV, "groups of the wrong length", _ev(query_groups=LAB[:3], gallery_groups=LAB,
                                               candidates="same_group"), ValueError,
         "query_groups: 3 entries for 6 queries"),
    Case(TOPK, "non-binary codes with distance=hamming", lambda ctx: exact_topk(T, T, 2, "hamming"), ValueError,
         "hamming distance needs binary codes in {0,1} or {-1,+1}"),
    Case(TOPK, "NaN embeddings", lambda ctx: exact_topk(torch.from_numpy(_nan(E)), T, 2), ValueError,
         "query embeddings: 2 of 6 items contain NaN or inf"),
    Case(TOPK, "query and gallery of different widths", lambda ctx: exact_topk(T, T[:, :3], 2), ValueError,
         "query embeddings have 4 dims, gallery embeddings 3"),
    Case(TOPK, "ids of the wrong length", lambda ctx: exact_topk(T, T, 2, query_ids=torch.arange(5),
                                                                 gallery_ids=torch.arange(6)), ValueError,
         "query_ids: 5 entries for 6 queries"),
    Case(TOPK, "k larger than the gallery", lambda ctx: exact_topk(T, T, 7), ValueError,
         "k=7: expected an integer between 1 and the gallery size 6"),
    Case(RR, "inf in the attributions", lambda ctx: relevance_rank_accuracy(
        torch.tensor([[[0.0, float("inf")], [1.0, 2.0]]]), torch.ones(1, 2, 2)), ValueError,
         "attributions: 1 of 1 images contain NaN or inf"),
    Case(RR, "NaN in the masks", lambda ctx: relevance_rank_accuracy(
        torch.rand(2, 2, 2), torch.tensor([[[0.0, float("nan")], [1.0, 0.0]]] * 2)), ValueError,
         "masks: 2 of 2 images contain NaN or inf"),
    Case(RR, "no images", lambda ctx: relevance_rank_accuracy(torch.rand(0, 4, 4), torch.ones(0, 4, 4)),
         ValueError, "attributions: no images"),
    Case(RR, "masks of another size", lambda ctx: relevance_rank_accuracy(torch.rand(2, 4, 4), torch.ones(2, 4, 5)),
         ValueError, "must describe the same N images of the same size"),
]

# -- the command line: one line "error: <key>=<value>: <expected>", exit status 2 -------------------------------
CONFIG = "experiments/configs/simsiam_hu_phantom.yaml"
CLI = "command line"


def cli(*args, sub="fit"):
    """Run ``python -m experiments`` in-process; the case checks the one line printed on stderr."""
    def run(ctx):
        from experiments.cli import main

        main([sub, "--config", str(ROOT / CONFIG), f"--trainer.default_root_dir={ctx.tmp_path}",
              f"--trainer.logger.init_args.save_dir={ctx.tmp_path}", *TINY_MODEL,
              *[a(ctx) if callable(a) else a for a in args]])
    return run


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY_MODEL = ["--model.init_args.backbone=resnet10t", "--model.init_args.proj_hidden_dim=8",
              "--model.init_args.proj_dim=8", "--model.init_args.pred_hidden_dim=4"]
CB = "--trainer.callbacks+="

CLI_CASES = [
    Case(CLI, "HU window with low > high", cli("--model.init_args.hu_windows=[[300,-200],[50,150]]"), SystemExit,
         "error: model.init_args.hu_windows[0]=[300.0, -200.0]: expected an HU window [low, high] with low < high"),
    Case(CLI, "unknown predict_split", cli("--data.init_args.predict_split=validation"), SystemExit,
         "error: data.init_args.predict_split='validation': expected one of ('train', 'val', 'test')"),
    Case(CLI, "unknown backbone", cli("--model.init_args.backbone=resnet181"), SystemExit,
         "error: model.init_args.backbone='resnet181' is not a timm model name; did you mean"),
    Case(CLI, "a config file that does not exist", cli("--config=experiments/configs/simsiam_hu_phantm.yaml"),
         SystemExit, "error: --config: File does not exist"),
    Case(CLI, "a value of the wrong type", cli("--trainer.max_epochs=ten"), SystemExit,
         "error: trainer.max_epochs='ten': expected int"),
    Case(CLI, "unknown class_path", cli("--model.class_path=lightning_modules.simsiam.SimSiamHU"), SystemExit,
         "error: model.class_path='lightning_modules.simsiam.SimSiamHU': cannot import it"),
    Case(CLI, "unknown callback class_path", cli(CB + "callbacks.RetrievalEvalution"), SystemExit,
         "error: trainer.callbacks.class_path='callbacks.RetrievalEvalution': cannot import it"),
    Case(CLI, "a key the class does not have", cli("--model.init_args.projection_dim=64"), SystemExit,
         "error: model.init_args.projection_dim='64': not a parameter of lightning_modules.simsiam.SimSiam"),
    Case(CLI, "bad callback argument", cli(CB + '{"class_path": "callbacks.RetrievalGrid", '
                                           '"init_args": {"every_n_epochs": 0}}'), SystemExit,
         "error: trainer.callbacks[8].init_args.every_n_epochs=0: expected >= 1"),
    Case(CLI, "a callback configured twice with clashing outputs", cli(CB + "callbacks.RetrievalEvaluation"),
         SystemExit, "error: trainer.callbacks[8] and trainer.callbacks[0]: callbacks.RetrievalEvaluation is "
                     "configured twice and both write"),
    Case(CLI, "monitor key that no callback logs", cli(CB + '{"class_path": "pytorch_lightning.callbacks.'
                                                       'EarlyStopping", "init_args": {"monitor": "val/mP@3"}}'),
         SystemExit, "error: trainer.callbacks[8].init_args.monitor='val/mP@3': no callback logs this key"),
    Case(CLI, "--ckpt_path of another method", cli(lambda ctx: f"--ckpt_path={_vae_ckpt(ctx)}", sub="test"),
         SystemExit,
         "written by lightning_modules.vae.VAE, but the config's model.class_path is "
         "lightning_modules.simsiam.SimSiam"),
    Case(CLI, "--ckpt_path that is not a checkpoint", cli(lambda ctx: f"--ckpt_path={_text_file(ctx)}", sub="test"),
         SystemExit, "not a PyTorch checkpoint (looks like text starting"),
]


# -- the evaluation protocol and callbacks, before the first training step ------------------------------------
def _monitor(monitor, **evaluation):
    def run(ctx):
        from pytorch_lightning.callbacks import ModelCheckpoint

        from callbacks import RetrievalEvaluation
        from callbacks.protocol_checks import check_monitors

        check_monitors([RetrievalEvaluation(**evaluation), ModelCheckpoint(monitor=monitor)])
    return run


def _validate(**evaluation):
    """``trainer.validate`` of a tiny model on the CT phantom with a RetrievalEvaluation(**evaluation)."""
    def run(ctx):
        import pytorch_lightning as pl

        from callbacks import RetrievalEvaluation
        from datamodules.decathlon_liver import DecathlonLiverDataModule

        dm = DecathlonLiverDataModule(str(ctx.request.getfixturevalue("phantom_root")), image_size=32,
                                      train_volumes=5, slices_with_liver=3, slices_without_liver=2, batch_size=8,
                                      num_workers=0, cache_dir=str(ctx.tmp_path / "cache"))
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[RetrievalEvaluation(**evaluation)],
                             default_root_dir=ctx.tmp_path)
        trainer.validate(_tiny(), datamodule=dm, verbose=False)
    return run


PR = "RetrievalEvaluation protocol"
PROTOCOL_CASES = [
    Case(PR, "k_values larger than the gallery split", _validate(k_values=[1, 500]), ValueError,
         "RetrievalEvaluation.k_values=[1, 500]: k=500 exceeds the 25 items of the gallery "
         "split 'train'"),
    Case(PR, "a query split the data does not have", _validate(val_query_split="holdout"), ValueError,
         "RetrievalEvaluation.val_query_split='holdout': no such split"),
    Case(PR, "a multi-label rule on class ids", _validate(relevance="label_overlap"), ValueError,
         "RetrievalEvaluation.relevance='label_overlap': needs multi-hot labels [C] per sample"),
    Case(PR, "a candidate set without the group key", _validate(candidate_sets=["all", "same_patient"],
                                                                group_key="hospital"), ValueError,
         "['same_patient'] need the sample key group_key='hospital'"),
    Case(PR, "a label key the samples do not have", _validate(label_key="finding"), ValueError,
         "RetrievalEvaluation.label_key='finding': the samples of split 'val' have no such key"),
    Case(PR, "a monitor of a candidate set not configured", _monitor("val/cross_patient/AP@10"), ValueError,
         "ModelCheckpoint.monitor='val/cross_patient/AP@10': no callback logs this key"),
    Case(PR, "monitor val/RR without an explanation callback", _monitor("val/RR"), ValueError,
         "expected an ExplanationEvaluation callback"),
    Case(PR, "NaN embeddings in validation (non_finite='error')", lambda ctx: _nan_validate(ctx), ValueError,
         "embeddings of split 'val': 7 of 15 items contain NaN or inf"),
    Case("DecathlonLiverDataModule", "HU window with low > high", lambda ctx: __import__(
        "datamodules.decathlon_liver", fromlist=["x"]).DecathlonLiverDataModule("nowhere", window=(300, -200)),
         ValueError, "window=(300, -200): expected (low, high) in HU with low < high"),
]


def _nan_validate(ctx):
    """Every second embedding NaN: the callback stops and names the split and the count."""
    import pytorch_lightning as pl

    from callbacks import RetrievalEvaluation
    from datamodules.decathlon_liver import DecathlonLiverDataModule
    from tests.helpers import NaNEmbeddingsFrom

    dm = DecathlonLiverDataModule(str(ctx.request.getfixturevalue("phantom_root")), image_size=32,
                                  train_volumes=5, slices_with_liver=3, slices_without_liver=2, batch_size=8,
                                  num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=ctx.tmp_path,
                         callbacks=[RetrievalEvaluation(k_values=[1, 5]), NaNEmbeddingsFrom(0)])
    trainer.validate(_tiny(), datamodule=dm, verbose=False)


# -- checkpoints ------------------------------------------------------------------------------------------------
def _text_file(ctx):
    path = ctx.tmp_path / "notes.ckpt"
    path.write_text("epoch 3: loss 0.41\n")
    return path


def _tiny(**kw):
    from lightning_modules.simsiam import SimSiam

    return SimSiam(**{"backbone": "resnet10t", "proj_hidden_dim": 8, "proj_dim": 8, "pred_hidden_dim": 4, **kw})


def _ckpt(ctx, name="model.ckpt", model=None, **extra):
    """A Lightning-style checkpoint of a tiny SimSiam (``extra`` overrides top-level entries)."""
    import pytorch_lightning as pl

    model = model or _tiny()
    data = {"state_dict": model.state_dict(), "pytorch-lightning_version": pl.__version__, "epoch": 0,
            "hyper_parameters": {**model.hparams, "_class_path": "lightning_modules.simsiam.SimSiam"},
            "medcbir_format": 1, **extra}
    path = ctx.tmp_path / name
    torch.save(data, path)
    return path


def _vae_ckpt(ctx):
    return _ckpt(ctx, hyper_parameters={"_class_path": "lightning_modules.vae.VAE"})


def _truncated(ctx):
    path = _ckpt(ctx)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _check(make, model=None, key="--ckpt_path"):
    def run(ctx):
        from lightning_modules.components.checkpoints import check_checkpoint

        return check_checkpoint(make(ctx), model() if model else _tiny(), key=key)
    return run


class Foreign:
    """An arbitrary Python object inside a checkpoint (not loadable with weights_only=True)."""


CK = "checkpoint (`--ckpt_path`)"
CKPT_CASES = [
    Case(CK, "a text file", _check(_text_file), ValueError, "not a PyTorch checkpoint (looks like text starting"),
    Case(CK, "an empty file", _check(lambda ctx: (ctx.tmp_path / "empty.ckpt").open("w").close()
                                     or ctx.tmp_path / "empty.ckpt"), ValueError, "the file is empty (0 bytes)"),
    Case(CK, "a truncated file", _check(_truncated), ValueError,
         "truncated or damaged"),
    Case(CK, "Python objects other than tensors", _check(lambda ctx: _ckpt(ctx, extra_object=Foreign())),
         ValueError, "holds Python objects other than tensors and plain values (e.g. tests.error_cases.Foreign)"),
    Case(CK, "plain weights, not a Lightning checkpoint",
         _check(lambda ctx: torch.save(_tiny().state_dict(), ctx.tmp_path / "w.pth") or ctx.tmp_path / "w.pth"),
         ValueError, "not a Lightning checkpoint (it holds a dict without 'state_dict')"),
    Case(CK, "newer project checkpoint format", _check(lambda ctx: _ckpt(ctx, medcbir_format=99)), ValueError,
         "written in checkpoint format 99 by a newer version of this project"),
    Case(CK, "newer pytorch_lightning", _check(lambda ctx: _ckpt(ctx, **{"pytorch-lightning_version": "99.1.0"})),
         ValueError, "written by pytorch_lightning 99.1.0, newer than the installed"),
    Case(CK, "written by another method", _check(lambda ctx: _ckpt(ctx, hyper_parameters={
        "_class_path": "lightning_modules.vae.VAE"})), ValueError,
         "written by lightning_modules.vae.VAE, but model.class_path is lightning_modules.simsiam.SimSiam"),
    Case(CK, "other hyper-parameters", _check(lambda ctx: _ckpt(ctx, model=_tiny(proj_dim=16)).with_name(
        "model.ckpt")), ValueError, "hyper-parameters that differ: proj_dim=16 in the file, 8 here"),
    Case("model.init_args.stage1_checkpoint", "not a checkpoint", lambda ctx: __import__(
        "lightning_modules.simclr_gem_finetune", fromlist=["x"]).SimCLRGeMFinetune(
        stage1_checkpoint=str(_text_file(ctx)), backbone="resnet10t", extra_channels=(8, 8)), ValueError,
         "model.init_args.stage1_checkpoint="),
    Case("model.init_args.stage1_checkpoint", "written by another method", lambda ctx: __import__(
        "lightning_modules.simclr_gem_finetune", fromlist=["x"]).SimCLRGeMFinetune(
        stage1_checkpoint=str(_ckpt(ctx)), backbone="resnet10t", extra_channels=(8, 8)), ValueError,
         "written by lightning_modules.simsiam.SimSiam; expected a SimCLRGeM stage-1 checkpoint"),
    Case("model.init_args.pretrained", "not a weights file", lambda ctx: __import__(
        "lightning_modules.components.backbones", fromlist=["x"]).create_backbone(
        "resnet10t", pretrained=str(_text_file(ctx))), ValueError, "model.pretrained="),
    Case("model.init_args.pretrained", "weights of another backbone", lambda ctx: __import__(
        "lightning_modules.components.backbones", fromlist=["x"]).create_backbone(
        "resnet18", pretrained=str(_weights(ctx, "resnet10t"))), ValueError,
         "cannot be loaded into the resnet18 backbone"),
]


def _weights(ctx, name):
    import timm

    path = ctx.tmp_path / f"{name}.pth"
    torch.save(timm.create_model(name, num_classes=0).state_dict(), path)
    return path


CASES: list[Case] = [*ARRAY_CASES, *CLI_CASES, *PROTOCOL_CASES, *CKPT_CASES]


def markdown(cases: list[Case] = None) -> str:
    """docs/errors.md: one table row per case."""
    cases = CASES if cases is None else cases
    lines = [
        "# Errors: every validated input",
        "",
        "Each bad input below stops with one message that names the array, key or file, the value given and",
        "what was expected. Every row is a test (`tests/test_errors.py` runs `tests/error_cases.py`); this",
        "file is generated from that table (`python -m tests.error_cases > docs/errors.md`) and a test checks",
        "that it is in step.",
        "",
        "- **Command line** (`python -m experiments ...`): a bad key, value, config file or checkpoint prints",
        "  one line, `error: <key>=<value>: <what is expected>`, and exits with status 2. An error raised",
        "  later by one of the project's own checks (a missing data root, a broken file) ends the output the",
        "  same way, as one `error: ...` line instead of a traceback. Set `MEDCBIR_TRACEBACK=1` to get the",
        "  full traceback. `--help` and `--print_config` are unchanged.",
        "- **Before the first training step** the evaluation protocol is checked against the data: the query",
        "  and gallery splits exist and are not empty, `k_values` fit in the gallery, the labels suit",
        "  `relevance`, the samples carry `label_key` / `group_key`, and every `monitor` that names a retrieval",
        "  key (`val/mP@5`, `val/cross_patient/AP@10`, `val/RR`) is logged by a configured callback. A",
        "  `same_patient` candidate set that can never hold a candidate is a warning. A project callback",
        "  configured twice that would write the same files or keys is an error.",
        "- **Non-finite embeddings** are never ranked. `RetrievalEvaluation(non_finite=\"error\")` (default)",
        "  stops with the split and the number of affected items; `non_finite=\"warn\"` warns and logs NaN",
        "  metrics for that evaluation, which `ModelCheckpoint` ranks below every real score (while no",
        "  evaluation has produced a real score yet, a NaN epoch can still fill an empty top-k slot).",
        "- **Checkpoints** are read with `torch.load(weights_only=True)` everywhere (`--ckpt_path`,",
        "  `model.init_args.stage1_checkpoint`, `model.init_args.pretrained` via timm): the project's",
        "  checkpoints hold only tensors and plain values, so nothing needs `weights_only=False`.",
        "  Checkpoints record `medcbir_format`; a newer format is refused with both versions named.",
        "- **A run that fails part-way** keeps what it wrote: checkpoints (with",
        "  `callbacks.checkpoint_io.AtomicCheckpointIO`), `metrics.json`, predictions and caches are written to",
        "  a temporary file and renamed, and `metrics.csv` is flushed when Lightning stops (tested).",
        "",
        "| entry point | bad input | error | message contains |",
        "|---|---|---|---|",
    ]
    for c in cases:
        msg = c.message.replace("|", "\\|")
        error = "exit status 2" if c.error is SystemExit else f"`{c.error.__name__}`"
        lines.append(f"| `{c.entry}` | {c.bad} | {error} | `{msg}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
