"""The ``facekd`` console script: one verb per ``python -m facekd...`` entry point.

``facekd VERB ARGS`` runs exactly what ``python -m MODULE ARGS`` runs; each entry module
exposes ``main(argv) -> int``.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

# verb -> (module, one-line description). Keep in the order of the pipeline.
VERBS: dict[str, tuple[str, str]] = {
    "summary": ("facekd.models.summary", "parameters, MACs and embedding size of a model"),
}


def _usage() -> str:
    width = max(map(len, VERBS))
    lines = ["usage: facekd VERB [options]   (facekd VERB --help for the options)", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {desc}   [python -m {mod}]" for verb, (mod, desc) in VERBS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its entry module."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from facekd import __version__
        print(f"facekd {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"facekd: unknown verb '{verb}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(VERBS[verb][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
