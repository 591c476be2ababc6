"""Every W&B sweep file: sample its parameters, build the agent's exact argv, run it through the CLI."""
import math
import random
from pathlib import Path

import pytest
import yaml

from experiments.cli import RetrievalCLI
from tests.conftest import CONFIGS, tiny_args

SWEEPS = sorted((CONFIGS.parent / "sweeps").glob("*.yaml"))


def sample(spec: dict, rng: random.Random):
    """One value from a W&B parameter spec (the distributions our sweep files use)."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    dist = spec.get("distribution", "uniform")
    lo, hi = spec["min"], spec["max"]
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    raise AssertionError(f"distribution {dist!r} not handled by this test; extend sample()")


def agent_argv(sweep: dict, values: dict) -> list:
    """The command a W&B agent runs: ${env} dropped, python -m kept, ${args} -> --name=value."""
    argv = []
    for token in sweep["command"]:
        if token == "${env}":
            continue
        if token == "${args}":
            argv += [f"--{name}={value}" for name, value in values.items()]
        else:
            argv.append(token)
    return argv


def test_every_config_has_a_sweep():
    assert {p.stem for p in SWEEPS} == {p.stem for p in CONFIGS.glob("*.yaml")}


@pytest.mark.parametrize("sweep_file", SWEEPS, ids=lambda p: p.stem)
def test_sweep_runs_through_the_cli(sweep_file, phantom_root, deeplesion_root, brats_root, tmp_path, monkeypatch):
    sweep = yaml.safe_load(sweep_file.read_text())
    values = {name: sample(spec, random.Random(0)) for name, spec in sweep["parameters"].items()}
    argv = agent_argv(sweep, values)
    assert argv[:4] == ["python", "-m", "experiments", "fit"] and sweep["program"] == "experiments"
    config = Path(argv[argv.index("--config") + 1])
    assert (CONFIGS.parents[1] / config).is_file(), config
    monkeypatch.chdir(CONFIGS.parents[1])
    monkeypatch.setenv("WANDB_MODE", "disabled")  # no W&B service needed in CI; the logger path is exercised
    cli = RetrievalCLI(args=[*argv[3:], *tiny_args(config, tmp_path, phantom_root, deeplesion_root, brats_root),
                             "--trainer.max_epochs=1",
                             "--trainer.limit_train_batches=2"])
    for name, value in values.items():
        assert cli.config.fit.get(name) == value, name  # each sampled value reached the parsed config
    assert sweep["metric"]["name"] in cli.trainer.callback_metrics, sorted(cli.trainer.callback_metrics)
