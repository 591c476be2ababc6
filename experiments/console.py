"""Console entry points installed by ``pip install -e .`` (setup.cfg): ``medcbir`` = ``python -m experiments``."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from experiments.cli import main
from experiments.run_folders import UntrainedEvaluationError


def medcbir(argv: Optional[Sequence[str]] = None) -> int:
    """``medcbir {fit,validate,test,predict} --config <yaml> ...``; exit status 2 on a refused evaluation."""
    try:
        main(list(sys.argv[1:] if argv is None else argv))
    except UntrainedEvaluationError as err:
        print(f"medcbir: error: {err}", file=sys.stderr)
        return 2
    return 0
