"""``report.md`` + ``report.json`` of an export: one row per variant (and the teacher), one plot of
verification accuracy against batch-1 latency."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facekd.export.latency import Latency

FAR_KEY = "1e-03"


@dataclass
class VariantResult:
    """Everything measured about one exported file (or the torch reference / the teacher)."""

    name: str
    path: str | None
    file_bytes: int | None
    parameters: int
    macs: int
    latency: list[Latency] = field(default_factory=list)
    agreement: dict[str, float] = field(default_factory=dict)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for report.json."""
        return {"name": self.name, "path": self.path, "file_bytes": self.file_bytes, "parameters": self.parameters,
                "macs": self.macs, "latency": [lat.to_dict() for lat in self.latency],
                "agreement_with_torch": self.agreement, "sets": self.sets, "notes": self.notes}


def set_summary(metrics: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """The figures the report keeps of one verification set, with the difference to the torch model."""
    tar = metrics["tar_at_far"].get(FAR_KEY)
    out = {"accuracy": metrics["accuracy"], "accuracy_std": metrics["accuracy_std"],
           "tar_at_far_1e-3": tar, "tar_at_far_1e-3_skipped": metrics["tar_at_far_skipped"].get(FAR_KEY),
           "val_at_far_1e-3": metrics["val_at_far"], "n_pairs": metrics["n_pairs"]}
    if reference is not None:
        out["accuracy_diff_to_torch"] = metrics["accuracy"] - reference["accuracy"]
        ref_tar = reference["tar_at_far"].get(FAR_KEY)
        out["tar_diff_to_torch"] = None if tar is None or ref_tar is None else tar - ref_tar
        out["val_diff_to_torch"] = metrics["val_at_far"] - reference["val_at_far"]
    return out


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _lat(r: VariantResult, batch: int) -> Latency | None:
    return next((lat for lat in r.latency if lat.batch == batch), None)


def markdown(results: Sequence[VariantResult], meta: dict[str, Any]) -> str:
    """The report as Markdown: context, the variant table, the accuracy table, notes."""
    lines = ["# facekd export report", "",
             f"Model `{meta['model']}` ({meta['arch']}, input {meta['input_size']} px); onnxruntime "
             f"{meta['onnxruntime']} on {meta['cpu']} ({meta['cores']} cores). Latency: batch 1 on one thread and "
             f"batch 32 on all threads, median / p90 of timed runs; the 1-minute load average before and after "
             "each measurement is in report.json (other processes on the machine slow it down).", "",
             f"Calibration: {meta.get('calibration') or 'none'}. Agreement: cosine between each variant's and the "
             f"torch model's flip-summed embeddings of {meta['agreement_images']} held-out crops "
             f"({meta['agreement_source']}).", ""]
    head = ["variant", "file (MB)", "x fp32", "params (M)", "MACs (M)", "b1/1t median (ms)", "b1/1t p90",
            "b32/all median (ms)", "b32/all p90", "img/s b32", "cos mean", "cos min"]
    fp32 = next((r.file_bytes for r in results if r.name == "fp32"), None)
    rows = []
    for r in results:
        b1, b32 = _lat(r, 1), _lat(r, 32)
        rows.append([r.name, _fmt(r.file_bytes / 1e6 if r.file_bytes else None, ".3f"),
                     _fmt(r.file_bytes / fp32 if r.file_bytes and fp32 else None, ".3f"),
                     _fmt(r.parameters / 1e6, ".3f"), _fmt(r.macs / 1e6, ".1f"),
                     _fmt(b1.median_ms if b1 else None, ".2f"), _fmt(b1.p90_ms if b1 else None, ".2f"),
                     _fmt(b32.median_ms if b32 else None, ".1f"), _fmt(b32.p90_ms if b32 else None, ".1f"),
                     _fmt(b32.images_per_s if b32 else None, ".0f"), _fmt(r.agreement.get("cos_mean"), ".5f"),
                     _fmt(r.agreement.get("cos_min"), ".5f")])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    set_names = list(dict.fromkeys(s for r in results for s in r.sets))
    if set_names:
        lines += ["", "## Verification", "",
                  "| variant | set | accuracy | diff to torch | TAR@FAR=1e-3 | diff | VAL@FAR=1e-3 (10-fold) | diff |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results:
            for name in set_names:
                s = r.sets.get(name)
                if s is None:
                    continue
                lines.append(f"| {r.name} | {name} | {_fmt(s['accuracy'])} | {_fmt(s.get('accuracy_diff_to_torch'), '+.4f')} "
                             f"| {_fmt(s['tar_at_far_1e-3'])} | {_fmt(s.get('tar_diff_to_torch'), '+.4f')} "
                             f"| {_fmt(s['val_at_far_1e-3'])} | {_fmt(s.get('val_diff_to_torch'), '+.4f')} |")
        if any(r.sets.get(n, {}).get("tar_at_far_1e-3_skipped") for r in results for n in set_names):
            lines.append("")
            lines.append("TAR@FAR=1e-3 n/a: the set has too few impostor pairs for that FAR.")
    notes = [f"- {r.name}: {n}" for r in results for n in r.notes]
    if notes:
        lines += ["", "## Notes", "", *notes]
    if meta.get("plot"):
        lines += ["", f"![accuracy vs latency]({meta['plot']})"]
    return "\n".join(lines) + "\n"


def plot_accuracy_latency(results: Sequence[VariantResult], path: Path) -> Path | None:
    """Accuracy (first set; cosine agreement when no set) against batch-1 latency, one point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for r in results:
        b1 = _lat(r, 1)
        if b1 is None:
            continue
        if r.sets:
            y, label = next(iter(r.sets.values()))["accuracy"], f"accuracy ({next(iter(r.sets))})"
        elif "cos_mean" in r.agreement:
            y, label = r.agreement["cos_mean"], "cosine agreement with torch"
        else:
            continue
        points.append((r.name, b1.median_ms, y, label))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for name, x, y, _ in points:
        ax.scatter([x], [y])
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency, batch 1, one thread (ms, log scale)")
    ax.set_ylabel(points[0][3])
    ax.set_title("Accuracy against CPU latency (onnxruntime)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def machine_info() -> dict[str, Any]:
    """CPU name, cores and onnxruntime version for the report header."""
    import onnxruntime

    from facekd.export.latency import cpu_count

    from facekd.sysinfo import cpu_name

    cpu = cpu_name()
    return {"cpu": cpu, "cores": cpu_count(), "onnxruntime": onnxruntime.__version__}


def write_report(out: Path, results: Sequence[VariantResult], meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write report.json, report.md and accuracy_latency.png into ``out``."""
    plot = plot_accuracy_latency(results, out / "accuracy_latency.png")
    meta = dict(meta, plot=plot.name if plot else None)
    (out / "report.json").write_text(json.dumps({"meta": meta, "variants": [r.to_dict() for r in results]},
                                                indent=2, default=_json_default))
    (out / "report.md").write_text(markdown(results, meta))
    return out / "report.md", out / "report.json"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
