"""The shared Registry: registration, kinds, metadata, errors that list names and suggest one."""
from __future__ import annotations

import pytest

from facekd.registry import Registry, RegistryError, UnknownNameError, import_submodules


class _Custom(ValueError):
    pass


def test_register_get_names_and_meta() -> None:
    reg: Registry = Registry("widget")

    @reg.register("alpha", size=3)
    def alpha() -> int:
        return 1

    reg.add("beta", len)
    assert reg.get("alpha") is alpha and reg.get("beta") is len
    assert reg.names() == ["alpha", "beta"] and list(reg) == ["alpha", "beta"] and len(reg) == 2
    assert reg.entry("alpha").meta == {"size": 3}
    assert "alpha" in reg and "gamma" not in reg
    assert reg.help() == "alpha, beta"


def test_unknown_name_lists_known_and_suggests() -> None:
    reg: Registry = Registry("model", error=_Custom)
    reg.add("r50", object())
    reg.add("mbf", object())
    with pytest.raises(_Custom, match=r"unknown model 'r5O' \(did you mean 'r50'\?\); known: mbf, r50"):
        reg.get("r5O")
    with pytest.raises(_Custom, match=r"unknown model 'zzz'; known: mbf, r50$"):
        reg.get("zzz")


def test_kinds_select_and_explain() -> None:
    reg: Registry = Registry("loss", kinds=("face", "classifier"))
    face, cls = object(), object()
    reg.add("srd", face, kinds=("face",))
    reg.add("srd", cls, kinds=("classifier",))
    reg.add("only_face", face, kinds=("face",))
    reg.add("any", len)
    assert reg.get("srd", "face") is face and reg.get("srd", "classifier") is cls
    assert reg.names("classifier") == ["any", "srd"]
    assert reg.names("face") == ["any", "only_face", "srd"]
    with pytest.raises(UnknownNameError, match="exists for face only"):
        reg.get("only_face", "classifier")
    with pytest.raises(RegistryError, match="unknown kind"):
        reg.add("x", len, kinds=("dog",))
    with pytest.raises(UnknownNameError, match="unknown kind 'dog'"):
        reg.get("srd", "dog")


def test_duplicates_are_refused_but_same_value_is_idempotent() -> None:
    reg: Registry = Registry("head")
    reg.add("a", len)
    reg.add("a", len)  # the same value again (e.g. a module imported twice) is fine
    with pytest.raises(RegistryError, match="head 'a' registered twice"):
        reg.add("a", abs)
    kinded: Registry = Registry("loss")
    kinded.add("k", len, kinds=("face",))
    with pytest.raises(RegistryError, match="registered twice for kind 'face'"):
        kinded.add("k", abs, kinds=("face", "classifier"))


def test_package_modules_register_on_first_lookup() -> None:
    calls: list[int] = []
    reg: Registry = Registry("thing", loader=lambda: calls.append(1) or reg.add("late", len))
    assert reg.names() == ["late"] and reg.get("late") is len and calls == [1]
    assert "facekd.distill.losses.kd" in import_submodules("facekd.distill.losses")
