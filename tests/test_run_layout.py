"""Where outputs go: the logger follows --trainer.default_root_dir; data code never imports evaluation code."""
import ast
from pathlib import Path

import pytest

from experiments.cli import RetrievalCLI
from tests.conftest import CONFIGS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_points_the_logger_at_default_root_dir(config):
    import yaml

    trainer = yaml.safe_load(config.read_text())["trainer"]
    assert trainer["logger"]["init_args"]["save_dir"] == "${...default_root_dir}"   # relative interpolation
    assert trainer["logger"]["init_args"]["name"] == config.stem


def test_logger_follows_default_root_dir(tmp_path):
    config = CONFIGS / "simclr_gem_phantom.yaml"
    cli = RetrievalCLI(args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}",
                             "--data.init_args.data_root=nowhere"], run=False)
    assert [Path(lg.save_dir) for lg in cli.trainer.loggers] == [tmp_path]
    assert Path(cli.trainer.log_dir).parent == tmp_path / config.stem


def test_default_root_dir_of_the_shipped_configs_is_runs():
    cli = RetrievalCLI(args=["--config", str(CONFIGS / "simsiam_hu_phantom.yaml"),
                             "--data.init_args.data_root=nowhere"], run=False)
    assert cli.trainer.loggers[0].save_dir == "runs"


def test_data_code_does_not_import_evaluation_code():
    """One-way flow data -> methods -> evaluation: no module under datamodules/ imports callbacks, methods
    or the CLI (checked on the source, so it costs no import)."""
    bad = []
    for path in (ROOT / "datamodules").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}: {n}" for n in names
                    if n.split(".")[0] in ("callbacks", "experiments", "lightning_modules")]
    assert not bad, bad


def test_io_helpers_are_reexported_for_old_imports(tmp_path):
    from callbacks.io import atomic_write, update_json
    from medcbir_io import atomic_write as neutral

    assert atomic_write is neutral
    update_json(tmp_path / "m.json", "val", {"a": 1})
    assert (tmp_path / "m.json").read_text().count('"a": 1') == 1


def test_logger_follows_default_root_dir_under_the_fit_subcommand(tmp_path, capsys):
    """Interpolation must also resolve when the config sits under a subcommand (``fit.trainer...``)."""
    import yaml

    with pytest.raises(SystemExit):
        RetrievalCLI(args=["fit", "--config", str(CONFIGS / "simsiam_hu_demo.yaml"),
                           f"--trainer.default_root_dir={tmp_path}", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path)
