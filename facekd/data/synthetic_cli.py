"""``python -m facekd.data.synthetic``: write a PNG grid of synthetic identities and/or held-out
evaluation sets (a verification .bin and gallery/probe image folders)."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

from facekd.data.synthetic import export_eval_sets
from facekd.data.synthetic_render import Difficulty, write_grid

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write a PNG grid of synthetic identities and/or held-out evaluation sets."""
    parser = argparse.ArgumentParser(prog="python -m facekd.data.synthetic",
                                     description="Procedural face identities: draw a grid (rows = identities, "
                                                 "columns = photos) and/or export held-out evaluation data "
                                                 "(a verification .bin and gallery/probe image folders). "
                                                 "Training data needs no export: pass --data "
                                                 "synthetic:ids=N,per_id=K,size=S,seed=Z to the pipelines.")
    parser.add_argument("--grid", default=None, metavar="PATH", help="write a PNG grid to PATH")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="write DIR/synthetic_val.bin, DIR/gallery/ and DIR/probes/ (held-out identities)")
    parser.add_argument("--val-ids", type=int, default=150, help="identities of the verification pairs")
    parser.add_argument("--pairs", type=int, default=3000, help="verification pairs (multiple of 20)")
    parser.add_argument("--gallery-ids", type=int, default=100,
                        help="gallery identities (plus half as many non-mated probe identities)")
    parser.add_argument("--probes-per-id", type=int, default=2, help="probe photos per gallery identity")
    parser.add_argument("--size", type=int, default=112, help="image side in px, 32..112 (default: 112)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    parser.add_argument("--ids", type=int, default=8, help="number of identities / rows (default: 8)")
    parser.add_argument("--samples", type=int, default=8, help="photos per identity / columns (default: 8)")
    for f in dataclasses.fields(Difficulty):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=float, default=f.default,
                            help=f"difficulty knob {f.name} (default: {f.default})")
    args = parser.parse_args(argv)
    knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(Difficulty)}
    if not args.grid and not args.export:
        parser.error("nothing to do: give --grid PATH and/or --export DIR")
    if args.grid:
        print(f"wrote {write_grid(args.grid, args.ids, args.samples, args.size, args.seed, **knobs)}")
    if args.export:
        try:
            paths = export_eval_sets(args.export, args.size, args.seed, args.val_ids, args.pairs, args.gallery_ids,
                                     args.probes_per_id, **knobs)
        except ValueError as err:
            parser.error(str(err))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
