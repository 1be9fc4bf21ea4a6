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


def test_backbone_lookup_imports_every_model_module_and_nothing_heavy() -> None:
    """The first backbone lookup imports every module of facekd.models (so a new backbone is one new
    file) and none of them pulls a heavy dependency in at module level."""
    code = ("import pkgutil, sys, facekd.models as m\n"
            "from facekd.models.registry import list_backbones\n"
            "names = list_backbones()\n"
            "mods = [f'facekd.models.{i.name}' for i in pkgutil.iter_modules(m.__path__) if not i.name.startswith('_')]\n"
            "print(len(names), all(x in sys.modules for x in mods), "
            f"','.join(h for h in {HEAVY + ('onnx',)!r} if h in sys.modules) or '-')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, all_imported, heavy = proc.stdout.split()
    assert int(count) > 10 and all_imported == "True" and heavy == "-", proc.stdout
