"""``python -m experiments ...`` = the ``medcbir`` console command."""
from experiments.console import medcbir

if __name__ == "__main__":
    raise SystemExit(medcbir())
