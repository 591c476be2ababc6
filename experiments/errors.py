"""Readable command-line errors: one line naming the config key, the value given and what is expected.

jsonargparse reports a bad value as a Union error with the whole Namespace, and a bad value rejected by a
class's own check (``hu_windows``, ``predict_split``, ``backbone``...) as a traceback whose real reason is a
middle line. :class:`ReadableErrors` (a LightningCLI mixin) turns both into :class:`ConfigError`, checks the
callbacks and the ``--ckpt_path`` checkpoint before anything runs, and :func:`user_errors` prints a
``ConfigError`` (or any error our own validators raise) as one line with exit status 2. ``--help`` and
``--print_config`` are untouched. ``MEDCBIR_TRACEBACK=1`` shows the full traceback instead.
"""
from __future__ import annotations

import inspect
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = ("callbacks", "datamodules", "experiments", "lightning_modules")
TRACEBACK_ENV = "MEDCBIR_TRACEBACK"
SPECIAL_CKPT = ("last", "best", "hpc", "registry")


class ConfigError(ValueError):
    """A bad configuration value: ``key``, ``value`` and what is ``expected``; str() is the one line."""

    def __init__(self, key: str, value, expected: str):
        self.key, self.value, self.expected = key, value, expected
        shown = f"={value!r}" if value is not None else ""
        super().__init__(f"{key}{shown}: {expected}")


# -- parse errors (jsonargparse ArgumentError) ------------------------------------------------------------
def _bullets(text: str) -> list[str]:
    """The ``- ...`` entries under ``Errors:`` of a jsonargparse Union message, each joined to one line."""
    part = text.split("Errors:", 1)[1] if "Errors:" in text else ""
    part = re.split(r"\n\s*Given value", part)[0]
    items, current = [], []
    for line in part.splitlines():
        if re.match(r"^\s*- ", line):
            if current:
                items.append(" ".join(current))
            current = [line.strip()[2:].strip()]
        elif line.strip():
            current.append(line.strip())
    if current:
        items.append(" ".join(current))
    return [i for i in items if "NoneType" not in i]


def from_parse_error(message: str) -> ConfigError:
    """A jsonargparse parse error message -> ConfigError (key, value, reason)."""
    key_m = re.search(r'Parser key "([^"]+)"', message)
    key = key_m.group(1) if key_m else None
    given = re.search(r"Given value: (.*)", message)
    value = given.group(1).strip() if given else None
    reasons = _bullets(message)
    class_m = next((m for m in (re.search(r"Problem with given class_path '([^']+)':\s*(.*)", r, re.S)
                                for r in reasons) if m), None)
    nested = re.match(r"NestedArg\(key='([^']+)', val='(.*)'\)$", value or "")
    if class_m:
        path, why = class_m.group(1), class_m.group(2).strip()
        opt = re.search(r"Option '([^']+)' is not accepted", why)
        if opt and nested:
            return ConfigError(f"{key}.init_args.{opt.group(1)}", nested.group(2),
                               f"not a parameter of {path}; see `--{key}.help {path}` for its parameters")
        if nested and nested.group(1) == "class_path" or "import" in why or "has no attribute" in why:
            return ConfigError(f"{key}.class_path", path, f"cannot import it ({why}); expected the dotted path of "
                               f"a class, e.g. lightning_modules.simsiam.SimSiam or callbacks.RetrievalEvaluation")
        return ConfigError(key or "config", None, f"{path}: {why}")
    expected = [re.sub(r"<class '([\w.]+)'>", r"\1", r[len("Expected a "):] if r.startswith("Expected a ") else r)
                for r in reasons]
    if key and expected:
        if nested:
            key, value = f"{key}.{nested.group(1)}", nested.group(2)
        return ConfigError(key, value, "expected " + " or ".join(dict.fromkeys(expected)))
    one_line = " ".join(re.sub(r'Parser key "[^"]+":', "", message).split())
    return ConfigError("--config" if key == "config" else key or "command line", None, one_line)


# -- instantiation errors (a class's own validator) --------------------------------------------------------
def _innermost_user_error(err: BaseException) -> BaseException:
    """First exception of the cause chain raised outside jsonargparse (the class's own check)."""
    seen = err
    while seen is not None:
        tb, last = seen.__traceback__, None
        while tb is not None:
            last, tb = tb, tb.tb_next
        if last is not None and "jsonargparse" not in last.tb_frame.f_code.co_filename:
            return seen
        seen = seen.__cause__ or seen.__context__
    return err


def _constructed_class(err: BaseException) -> type | None:
    """The class whose ``__init__`` raised ``err`` (innermost ``__init__`` frame with a ``self``)."""
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            import pytorch_lightning as pl

            cls = type(frame.f_locals["self"])
            if issubclass(cls, (pl.LightningModule, pl.LightningDataModule, pl.Callback)):
                return cls
    return None


def _group(cls: type, config, param: str | None = None, value_text: str | None = None) -> str:
    import pytorch_lightning as pl

    if issubclass(cls, pl.LightningModule):
        return "model"
    if issubclass(cls, pl.LightningDataModule):
        return "data"
    path = f"{cls.__module__}.{cls.__name__}"
    callbacks = (config.get("trainer") or {}).get("callbacks") or [] if config is not None else []
    matches = []
    for i, cb in enumerate(callbacks if isinstance(callbacks, list) else []):
        cp = getattr(cb, "class_path", None) or (cb.get("class_path") if isinstance(cb, dict) else None)
        if cp and (cp == path or cp.split(".")[-1] == cls.__name__):
            args = getattr(cb, "init_args", None) or {}
            given = args.get(param) if param and hasattr(args, "get") else None
            exact = given is not None and value_text in (str(given), repr(given))
            matches.append((not exact, i))
    return f"trainer.callbacks[{min(matches)[1]}]" if matches else "trainer.callbacks"


def from_instantiation_error(err: BaseException, config=None) -> BaseException:
    """An error raised while the CLI builds model / data / callbacks -> ConfigError naming the full key."""
    inner = _innermost_user_error(err)
    cls = _constructed_class(inner)
    text = " ".join(str(inner).split())
    if cls is None:
        return inner
    if re.match(r"^(model|data|trainer)\.init_args\.\w+", text):  # the validator named the full key already
        return _value_error(text.split("=", 1)[0], text.split("=", 1)[1] if "=" in text else "", "", text)
    params = set(inspect.signature(cls.__init__).parameters)
    m = re.match(r"^(?:model\.|data\.)?(\w+)((?:\[\d+\])?)(=|:| )\s*(.*)$", text)
    if m and m.group(1) in params:
        value_text = m.group(4).partition(": ")[0] if m.group(3) == "=" else None
        group = _group(cls, config, m.group(1), value_text)
        key = f"{group}.init_args.{m.group(1)}{m.group(2)}"
        rest = m.group(4) if m.group(3) == "=" else f"{m.group(3).strip()} {m.group(4)}".strip(": ")
        if m.group(3) == "=":
            value, sep, expected = rest.partition(": ")
            return _value_error(key, value, expected) if sep else _value_error(key, rest, "")
        return ConfigError(key, None, rest)
    return ConfigError(f"{_group(cls, config)} ({cls.__module__}.{cls.__name__})", None, text)


def _value_error(key: str, value_text: str, expected: str, text: str | None = None) -> ConfigError:
    """ConfigError whose message shows the value as the validator printed it (or ``text`` verbatim)."""
    err = ConfigError(key, None, expected)
    err.value = value_text
    err.args = (text or (f"{key}={value_text}: {expected}" if expected else f"{key}={value_text}"),)
    return err


# -- the LightningCLI mixin ---------------------------------------------------------------------------------
class ReadableErrors:
    """Mix into LightningCLI (before it): config errors become :class:`ConfigError`; callbacks, monitors
    and ``--ckpt_path`` are checked before the subcommand runs."""

    def init_parser(self, **kwargs):
        parser = super().init_parser(**kwargs)
        parser.exit_on_error = False  # raise ArgumentError: translated in parse_arguments
        return parser

    def parse_arguments(self, parser, args) -> None:
        from jsonargparse import ArgumentError

        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise from_parse_error(str(err)) from err

    def _set_seed(self) -> None:
        """Seed as usual, but say so only once the classes are built (a config error then prints first)."""
        seed_log = logging.getLogger("lightning_fabric.utilities.seed")
        disabled, seed_log.disabled = seed_log.disabled, True
        try:
            super()._set_seed()
        finally:
            seed_log.disabled = disabled

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            config = self.config[self.subcommand] if self.subcommand else self.config
            translated = from_instantiation_error(err, config)
            if translated is err:
                raise
            raise translated from err
        seed = self._get(self.config, "seed_everything")
        if seed is not False and seed is not None:
            logging.getLogger("lightning_fabric.utilities.seed").info("Seed set to %s", seed)

    def instantiate_trainer(self, **kwargs):
        self.check_callbacks()  # before the Trainer prints anything
        return super().instantiate_trainer(**kwargs)

    def check_callbacks(self) -> None:
        """Clashing callbacks and unknown monitor keys, before training starts."""
        from callbacks.protocol_checks import check_callbacks, check_monitors

        configured = list(self._get(self.config_init, "trainer", default={}).get("callbacks") or [])
        names = [f"trainer.callbacks[{i}]" for i in range(len(configured))]
        for cb, name in zip(configured, names):
            cb.config_key = name  # messages of later checks (protocol_checks) name the config key
        check_callbacks(configured, names)
        if self.subcommand == "fit":
            check_monitors(configured, dict(zip(map(id, configured), names)))

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the checkpoint's hyper-parameters here: check the file first."""
        if self.config.get("subcommand"):
            ckpt = self.config[self.config.subcommand].get("ckpt_path")
            if ckpt and str(ckpt) not in SPECIAL_CKPT and not str(ckpt).startswith("registry:"):
                from lightning_modules.components.checkpoints import CheckpointError, check_lightning_checkpoint

                checkpoint = check_lightning_checkpoint(ckpt, key="--ckpt_path")
                written_by = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
                model = self.config[self.config.subcommand].get("model")
                configured = getattr(model, "class_path", None)
                if written_by and configured and written_by != configured:
                    raise CheckpointError(f"--ckpt_path={str(ckpt)!r}: written by {written_by}, but the config's "
                                          f"model.class_path is {configured}; use the config of that run (its "
                                          f"config.yaml) or a checkpoint of {configured.rsplit('.', 1)[-1]}")
        super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        ckpt = (self.config_init.get(subcommand) or {}).get("ckpt_path")
        if ckpt and str(ckpt) not in SPECIAL_CKPT and not str(ckpt).startswith("registry:"):
            from lightning_modules.components.checkpoints import check_checkpoint

            check_checkpoint(ckpt, self.model, key="--ckpt_path")
        super()._run_subcommand(subcommand)


# -- the one-line report ------------------------------------------------------------------------------------
def _ours(err: BaseException) -> bool:
    """Raised by one of this project's own validators (the innermost frame is in a project package)."""
    if isinstance(err, ConfigError):
        return True
    if not isinstance(err, (ValueError, FileNotFoundError, KeyError)):
        return False
    tb, last = err.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    path = Path(last.tb_frame.f_code.co_filename).resolve()
    return any(path.is_relative_to(PROJECT / p) for p in PACKAGES)


def one_line(err: BaseException) -> str:
    from lightning_modules.components.checkpoints import CheckpointError

    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    names_key = re.match(r"^[\w.\[\]-]+=", text) is not None  # "<key>=<value>: ...": a configuration error
    hint = "" if names_key or isinstance(err, (ConfigError, CheckpointError)) else \
        f" ({TRACEBACK_ENV}=1 shows the traceback)"
    return "error: " + " ".join(text.split()) + hint


@contextmanager
def user_errors():
    """Print a configuration or input error of ours as one line on stderr and exit with status 2."""
    try:
        yield
    except Exception as err:
        if os.environ.get(TRACEBACK_ENV) or not _ours(err):
            raise
        logging.shutdown()
        print(one_line(err), file=sys.stderr)
        raise SystemExit(2) from None
