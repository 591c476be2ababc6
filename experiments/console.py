"""Console entry points installed by ``pip install -e .`` (setup.cfg): ``medcbir`` = ``python -m experiments``."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

SEARCH_COMMANDS = ("index", "search", "serve")  # query-by-example search (the ``search`` package)


def medcbir(argv: Optional[Sequence[str]] = None) -> int:
    """``medcbir {fit,validate,test,predict,report,index,search,serve} ...``; exit status 2 on a configuration or
    input error (printed as one line by ``experiments.errors.user_errors``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["report"]:  # metrics.json of several runs -> one table + figure (experiments/report.py)
            from experiments.report import main as report

            report(args[1:])
            return 0
        if args and args[0] in SEARCH_COMMANDS:
            from search.cli import main as search_main

            return int(search_main(args) or 0)
        from experiments.cli import main

        main(args)
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
            return 2
        return int(stop.code or 0)
    return 0
