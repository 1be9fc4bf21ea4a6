"""Typed run configuration: dataclasses, YAML presets and command-line overrides.

Precedence, lowest first: dataclass defaults < ``--config`` YAML (a file path or the name of a
preset under ``facekd/configs/``) < explicit command-line flags < ``--set key=value``.
Every top-level scalar field becomes a ``--flag`` whose help text shows its default; nested
dataclass fields are reached with dotted ``--set`` keys (``--set optim.lr=0.05``).
Nothing here depends on the working directory: presets are found next to this package.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import yaml

PRESET_DIR = Path(__file__).resolve().parent / "configs"

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message says which."""


def field(default: Any = dataclasses.MISSING, *, help: str | Callable[[], str] = "",
          default_factory: Any = dataclasses.MISSING, choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field carrying the help text (and optional choices) shown by ``--help``; a callable
    help is called when the parser is built (e.g. to list a registry's names)."""
    meta = {"help": help, "choices": tuple(choices) if choices else None}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming the key."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional or tp is Any:
            return None
        raise ConfigError(f"config key '{key}' may not be empty")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' expects a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if tp is int and isinstance(value, str):
                return int(float(value)) if "e" in value.lower() else int(value)
            return tp(value)
        if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
            args = typing.get_args(tp)
            item_tp = args[0] if args else Any
            if isinstance(value, str):
                value = [v for v in (s.strip() for s in value.split(",")) if v]
            if not isinstance(value, (list, tuple)):
                value = [value]
            items = [_coerce(v, item_tp, key) if item_tp is not Any else v for v in value]
            return tuple(items) if origin is tuple or tp is tuple else list(items)
        if origin is dict or tp is dict:
            if not isinstance(value, Mapping):
                raise ValueError(value)
            return dict(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key '{key}': cannot read {value!r} as {getattr(tp, '__name__', tp)}") from err
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a (possibly partial, possibly nested) mapping; unknown keys are errors."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys here: {', '.join(sorted(prefix + n for n in names))}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {k: _coerce(_yaml_bool_word(v, fields[k]), hints[k], prefix + k) for k, v in data.items()}
    cfg = cls(**kwargs)
    _check_choices(cfg, prefix)
    return cfg


def _yaml_bool_word(value: Any, f: dataclasses.Field) -> Any:
    """YAML 1.1 reads a bare ``off``/``on`` as a boolean; give it back as the word when the field
    is a choice among words that include it (``amp: off``)."""
    choices = f.metadata.get("choices") if f.metadata else None
    if isinstance(value, bool) and choices:
        word = "on" if value else "off"
        if word in choices:
            return word
    return value


def _check_choices(cfg: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices") if f.metadata else None
        value = getattr(cfg, f.name)
        if choices and value not in choices:
            raise ConfigError(f"config key '{prefix}{f.name}' is {value!r}; choose one of {', '.join(map(str, choices))}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists), ready for YAML or JSON."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v
    return plain(cfg)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: values of ``override`` win, nested mappings merge."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` inside nested dicts, creating levels as needed."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a group of settings")
    node[keys[-1]] = value


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        set_dotted(out, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return out


def resolve_preset(name_or_path: str) -> Path:
    """A YAML path as given, or a preset name found in ``facekd/configs/`` (``.yaml`` optional)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    for cand in (PRESET_DIR / name_or_path, PRESET_DIR / f"{name_or_path}.yaml"):
        if cand.is_file():
            return cand
    presets = sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"config '{name_or_path}' is neither a file nor a preset; presets: {', '.join(presets) or 'none'}")


def presets_for(cls: type) -> list[str]:
    """Names of the presets in ``facekd/configs/`` whose keys are all settings of ``cls`` (the
    presets a command built on ``cls`` can load); a preset that cannot be read is left out."""
    names = {f.name for f in dataclasses.fields(cls)}
    out = []
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        try:
            keys = set(load_yaml(path))
        except ConfigError:
            continue
        if keys <= names:
            out.append(path.stem)
    return out


def _check_preset_keys(cls: type, name_or_path: str, path: Path, data: Mapping[str, Any]) -> None:
    """A preset of another command (keys ``cls`` does not have): one line naming the keys and the
    presets this command can load."""
    if path.parent != PRESET_DIR:
        return  # a user's own file: from_dict names its unknown keys
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"--config {name_or_path}: this preset is for another command (its key(s) "
                          f"{', '.join(unknown)} are not settings here); presets for this command: "
                          f"{', '.join(presets_for(cls)) or 'none'}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (safe loader only); an empty file is an empty mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config (all fields) as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> argparse.ArgumentParser:
    """Add one ``--flag`` per top-level scalar field of ``cls``, plus ``--config`` and ``--set``."""
    defaults = cls()
    hints = _hints(cls)
    group = parser.add_argument_group("settings (defaults shown; any field also via --set key=value)")
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            continue
        default = getattr(defaults, f.name)
        help_text = f.metadata.get("help", "") if f.metadata else ""
        help_text = help_text() if callable(help_text) else help_text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        choices = f.metadata.get("choices") if f.metadata else None
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": f"{help_text} (default: {shown})".strip()}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["metavar"] = f.name.upper()
            if choices:
                kw["choices"] = choices
                kw["metavar"] = "{" + ",".join(map(str, choices)) + "}"
        group.add_argument(_flag(f.name), **kw)
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="YAML file or preset name from facekd/configs/ (presets for this command: "
                             + (", ".join(presets_for(cls)) or "none") + ")")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set_items",
                        help="override any config field, dotted for nested groups; repeatable")
    return parser


def config_from_args(cls: type[T], args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> T:
    """Resolve the config from parsed arguments with the documented precedence."""
    data: dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        path = resolve_preset(args.config)
        preset = load_yaml(path)
        _check_preset_keys(cls, args.config, path.resolve(), preset)
        data = merge(data, preset)
    names = {f.name for f in dataclasses.fields(cls)}
    cli = {k: v for k, v in vars(args).items() if k in names}
    data = merge(data, cli)
    data = merge(data, parse_set(getattr(args, "set_items", []) or []))
    return from_dict(cls, data)


def parse_config(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None,
                 description: str = "", parser: argparse.ArgumentParser | None = None) -> tuple[T, argparse.Namespace]:
    """One call for entry points: build the parser from ``cls``, parse ``argv``, resolve the config.

    Pass a ``parser`` that already has extra (e.g. positional) arguments to keep them; they come
    back in the namespace.
    """
    if parser is None:
        parser = argparse.ArgumentParser(prog=prog, description=description,
                                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser, cls)
    args = parser.parse_args(argv)
    try:
        return config_from_args(cls, args), args
    except ConfigError as err:
        parser.error(str(err))
        raise  # unreachable; parser.error exits
