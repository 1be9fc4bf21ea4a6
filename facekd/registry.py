"""One small name -> builder registry, used by every pluggable part of facekd.

A registry maps names to values (builders, classes, functions), optionally per *kind*
(e.g. a loss for ``"face"`` and one for ``"classifier"`` students under the same name), with
free metadata per entry::

    BACKBONES = Registry("model", error=UnknownModelError, package="facekd.models")

    @BACKBONES.register("r50", kinds=("face",))
    def r50(**options): ...

    BACKBONES.get("r50")            # the builder
    BACKBONES.names(kind="face")    # sorted names, for --help strings
    BACKBONES.get("r5O")            # UnknownModelError: unknown model 'r5O' (did you mean 'r50'?); known: ...

``package`` names the package whose modules register entries: the first lookup imports every
module of it (``import_submodules``), so adding an entry is adding one module, no list to extend.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

__all__ = ["Registry", "Entry", "RegistryError", "UnknownNameError", "import_submodules", "did_you_mean"]

T = TypeVar("T")


class RegistryError(ValueError):
    """A registration that conflicts with an existing one, or a lookup that cannot be answered."""


class UnknownNameError(RegistryError):
    """A name (or name/kind pair) that nothing registered; the message lists the known names."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered value: its name, the kinds it serves (empty: every kind) and free metadata."""

    name: str
    value: T
    kinds: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def serves(self, kind: str | None) -> bool:
        """Whether this entry answers a lookup for ``kind`` (None: any kind)."""
        return kind is None or not self.kinds or kind in self.kinds


def did_you_mean(name: str, known: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def import_submodules(package: str) -> list[str]:
    """Import ``package`` and each of its direct modules (not starting with ``_``); their names."""
    pkg = importlib.import_module(package)
    names = [f"{package}.{m.name}" for m in pkgutil.iter_modules(getattr(pkg, "__path__", []))
             if not m.name.startswith("_")]
    for name in names:
        importlib.import_module(name)
    return names


class Registry(Generic[T]):
    """Named values with optional kinds and metadata; ``what`` names them in error messages."""

    def __init__(self, what: str, *, kinds: tuple[str, ...] | None = None,
                 error: type[Exception] = UnknownNameError, package: str | None = None,
                 loader: Callable[[], Any] | None = None) -> None:
        self.what = what
        self.kinds = kinds
        self.error = error
        self.package = package
        self._loader = loader
        self._loaded = package is None and loader is None
        self._entries: dict[str, list[Entry[T]]] = {}

    # ------------------------------------------------------------------ registration
    def register(self, name: str, *, kinds: tuple[str, ...] | list[str] = (),
                 **meta: Any) -> Callable[[T], T]:
        """Decorator registering the decorated value under ``name`` (for ``kinds``, with ``meta``)."""
        def wrap(value: T) -> T:
            self.add(name, value, kinds=kinds, **meta)
            return value
        return wrap

    def add(self, name: str, value: T, *, kinds: tuple[str, ...] | list[str] = (), **meta: Any) -> Entry[T]:
        """Register ``value`` under ``name``; re-registering the same value replaces its entry."""
        kinds = tuple(kinds)
        if self.kinds is not None:
            bad = [k for k in kinds if k not in self.kinds]
            if bad:
                raise RegistryError(f"unknown kind(s) {bad} for {self.what} '{name}'; kinds are {self.kinds}")
        entries = [e for e in self._entries.get(name, []) if not _same(e.value, value)]
        for other in entries:
            clash = set(other.kinds) & set(kinds) if other.kinds and kinds else {"any"}
            if clash:
                where = f" for kind '{sorted(clash)[0]}'" if clash != {"any"} else ""
                raise RegistryError(f"{self.what} '{name}' registered twice{where}")
        entry = Entry(name, value, kinds, dict(meta))
        self._entries[name] = entries + [entry]
        return entry

    # ------------------------------------------------------------------ lookup
    def load(self) -> None:
        """Import the modules that register entries (once): ``package``'s modules, then ``loader``."""
        if self._loaded:
            return
        self._loaded = True
        try:
            if self.package is not None:
                import_submodules(self.package)
            if self._loader is not None:
                self._loader()
        except BaseException:
            self._loaded = False
            raise

    def entry(self, name: str, kind: str | None = None) -> Entry[T]:
        """The entry for ``name`` (serving ``kind`` when given); unknown names raise ``self.error``."""
        self.load()
        if self.kinds is not None and kind is not None and kind not in self.kinds:
            raise self.error(f"unknown kind '{kind}' for a {self.what}; kinds are {', '.join(self.kinds)}")
        for e in self._entries.get(name, []):
            if e.serves(kind):
                return e
        known = self.names(kind)
        if name in self._entries:
            others = sorted({k for e in self._entries[name] for k in e.kinds})
            raise self.error(f"unknown {self.what} '{name}' for {kind}; '{name}' exists for "
                             f"{', '.join(others)} only; known for {kind}: {', '.join(known) or 'none'}")
        scope = f" for {kind}" if kind is not None else ""
        raise self.error(f"unknown {self.what} '{name}'{scope}{did_you_mean(name, known)}; "
                         f"known: {', '.join(known) or 'none'}")

    def get(self, name: str, kind: str | None = None) -> T:
        """The value registered under ``name`` (for ``kind``); unknown names raise ``self.error``."""
        return self.entry(name, kind).value

    def names(self, kind: str | None = None) -> list[str]:
        """Sorted registered names (those serving ``kind`` when given), e.g. for ``--help`` strings."""
        self.load()
        return sorted(n for n, es in self._entries.items() if any(e.serves(kind) for e in es))

    def entries(self, kind: str | None = None, *, ordered: bool = False) -> list[Entry[T]]:
        """Every entry (serving ``kind`` when given), sorted by name or, ``ordered``, as registered."""
        self.load()
        names = list(self._entries) if ordered else sorted(self._entries)
        return [e for n in names for e in self._entries[n] if e.serves(kind)]

    def help(self, kind: str | None = None, sep: str = ", ") -> str:
        """The names joined for a help string: ``"a, b, c"``."""
        return sep.join(self.names(kind))

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {len(self._entries)} names)"


def _same(a: object, b: object) -> bool:
    """Same registered value, also across a module reload (same qualified name and module)."""
    if a is b:
        return True
    return (getattr(a, "__module__", None) is not None and getattr(a, "__module__", None) == getattr(b, "__module__", 0)
            and getattr(a, "__qualname__", None) is not None
            and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", 0))
