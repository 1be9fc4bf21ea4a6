"""The ``facekd`` console script: one verb per ``python -m facekd...`` entry point.

``facekd VERB ARGS`` runs exactly what ``python -m MODULE ARGS`` runs; each entry module
exposes ``main(argv) -> int``.
"""
from __future__ import annotations

import difflib
import importlib
import sys
from typing import Sequence

# verb -> (module, one-line description). Keep in the order of the pipeline.
VERBS: dict[str, tuple[str, str]] = {
    "align": ("facekd.data_prep.align", "detect, align (5-point ArcFace template) and crop face photos"),
    "pack": ("facekd.data_prep.pack", "pack an aligned image-folder tree into RecordIO .rec/.idx"),
    "make-bin": ("facekd.data_prep.make_bin", "build an insightface verification .bin from pairs"),
    "synthetic": ("facekd.data.synthetic", "draw synthetic identities; export held-out evaluation sets"),
    "summary": ("facekd.models.summary", "parameters, MACs and embedding size of a model"),
    "train": ("facekd.pipelines.train", "train a face backbone with an ArcFace/CosFace head"),
    "distill": ("facekd.pipelines.distill", "distil a face teacher into a student with SRD"),
    "classify": ("facekd.pipelines.classify", "classification teachers, students and SRD (CIFAR, folders)"),
    "verify": ("facekd.eval.verify", "verification accuracy on .bin sets (LFW, CFP-FP, AgeDB-30)"),
    "identify": ("facekd.eval.identify", "1:N identification with faiss (CMC, TPIR@FPIR)"),
    "export": ("facekd.export", "fp32/fp16/int8 ONNX with latency + accuracy report; insightface pack"),
    "ijb": ("facekd.eval.ijb", "IJB-B / IJB-C TAR@FAR and 1:N as arcface_torch / insightface report them"),
    "demo": ("facekd.pipelines.demo", "the whole story on synthetic identities, CPU-sized"),
}


def _usage() -> str:
    width = max(map(len, VERBS))
    lines = ["usage: facekd VERB [options]   (facekd VERB --help for the options)", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {desc}   [python -m {mod}]" for verb, (mod, desc) in VERBS.items()]
    return "\n".join(lines)


def suggest_verb(verb: str) -> str | None:
    """The verb ``verb`` most likely meant (``make_bin`` -> ``make-bin``, ``distil`` -> ``distill``)."""
    if verb.replace("_", "-") in VERBS:
        return verb.replace("_", "-")
    close = difflib.get_close_matches(verb.replace("_", "-").lower(), list(VERBS), n=1, cutoff=0.6)
    return close[0] if close else None


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
        guess = suggest_verb(verb)
        hint = f"; did you mean '{guess}'? (facekd {guess} {' '.join(rest)})".rstrip() if guess else ""
        print(f"facekd: unknown verb '{verb}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(VERBS[verb][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
