"""Package imports stay light and the README's public names keep working without lazy-export maps."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("onnxruntime", "faiss", "insightface", "torchvision")


def test_packages_import_without_heavy_dependencies() -> None:
    code = ("import sys, facekd, facekd.models, facekd.data, facekd.data_prep, facekd.distill, facekd.engine, "
            "facekd.eval, facekd.export, facekd.pipelines\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "", f"heavy modules loaded by package imports: {proc.stdout.strip()}"


def test_readme_public_names() -> None:
    import facekd
    import facekd.export
    from facekd import FaceEmbedder, PhotoFace
    from facekd.eval.embed import FaceEmbedder as Direct

    assert FaceEmbedder is Direct and PhotoFace.__module__ == "facekd.eval.embed"
    assert callable(facekd.export.main)  # ``facekd export`` calls it
    try:
        facekd.not_a_name  # noqa: B018
    except AttributeError as err:
        assert "not_a_name" in str(err)
    else:
        raise AssertionError("facekd.not_a_name should raise AttributeError")
