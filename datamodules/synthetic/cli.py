"""``medcbir-phantom {liver,deeplesion} [options]``: write a synthetic dataset in the real on-disk layout.

``medcbir-phantom liver --root data/phantom/Task03_Liver`` (Task03_Liver) and ``medcbir-phantom deeplesion
--root data/phantom/DeepLesion`` (DL_info.csv + 16-bit PNGs); ``medcbir-phantom liver --help`` lists options.
The same writers run as ``python -m datamodules.synthetic.ct_liver_phantom`` / ``...deeplesion``.
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

WRITERS = {"liver": "datamodules.synthetic.ct_liver_phantom", "deeplesion": "datamodules.synthetic.deeplesion"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in WRITERS:
        print(f"usage: medcbir-phantom {{{','.join(WRITERS)}}} [--root FOLDER] [--seed N] ... "
              f"(medcbir-phantom liver --help for the options)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    importlib.import_module(WRITERS[argv[0]]).main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
