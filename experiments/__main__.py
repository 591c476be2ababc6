import sys

from experiments.cli import main
from experiments.report import main as report

if __name__ == "__main__":
    report(sys.argv[2:]) if sys.argv[1:2] == ["report"] else main()  # report: experiments/report.py
