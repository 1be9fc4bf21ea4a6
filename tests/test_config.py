"""The typed config layer: defaults < YAML < flags < --set, type coercion, clear errors."""
from __future__ import annotations

import dataclasses

import pytest

from facekd.config import ConfigError, field, from_dict, parse_config, parse_set, save_yaml, load_yaml, to_dict


@dataclasses.dataclass
class Optim:
    lr: float = field(0.1, help="learning rate")
    milestones: tuple[int, ...] = field((150, 180), help="decay epochs")


@dataclasses.dataclass
class Cfg:
    backbone: str = field("mbf", help="model name")
    batch_size: int = field(128, help="batch")
    amp: bool = field(False, help="mixed precision")
    head: str = field("arcface", help="head", choices=("arcface", "cosface"))
    val_bins: list[str] = field(default_factory=list, help="bins")
    resume: str | None = field(None, help="run dir")
    optim: Optim = field(default_factory=Optim, help="optimiser")


def test_defaults_and_flags():
    cfg, _ = parse_config(Cfg, ["--batch-size", "64", "--amp", "--val-bins", "a.bin,b.bin"])
    assert cfg.batch_size == 64 and cfg.amp is True and cfg.val_bins == ["a.bin", "b.bin"]
    assert cfg.backbone == "mbf" and cfg.optim.lr == 0.1 and cfg.resume is None


def test_precedence_yaml_flags_set(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("backbone: r50\nbatch_size: 32\noptim:\n  lr: 0.05\n")
    cfg, _ = parse_config(Cfg, ["--config", str(y), "--batch-size", "16", "--set", "optim.lr=0.2",
                                "--set", "optim.milestones=[1,2,3]"])
    assert cfg.backbone == "r50"          # from YAML
    assert cfg.batch_size == 16           # flag beats YAML
    assert cfg.optim.lr == 0.2            # --set beats everything
    assert cfg.optim.milestones == (1, 2, 3)


def test_unknown_key_and_bad_value_are_clear():
    with pytest.raises(ConfigError, match="optim.lrr"):
        from_dict(Cfg, {"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match="batch_size"):
        from_dict(Cfg, {"batch_size": "many"})
    with pytest.raises(ConfigError, match="choose one of"):
        from_dict(Cfg, {"head": "sphereface"})
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--set", "nope=1"])


def test_yaml_round_trip(tmp_path):
    cfg = from_dict(Cfg, parse_set(["backbone=r18", "val_bins=[x.bin]", "optim.lr=0.5"]))
    save_yaml(cfg, tmp_path / "cfg.yaml")
    again = from_dict(Cfg, load_yaml(tmp_path / "cfg.yaml"))
    assert again == cfg and to_dict(again)["optim"]["milestones"] == [150, 180]


def test_help_lists_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--help"])
    out = capsys.readouterr().out
    assert "--batch-size" in out and "(default: 128)" in out and "--set" in out


@dataclasses.dataclass
class AmpCfg:
    amp: str = field("off", help="autocast", choices=("off", "bf16", "fp16"))


def test_bare_yaml_off_reads_as_the_word(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("amp: off\n")
    cfg, _ = parse_config(AmpCfg, ["--config", str(y)])
    assert cfg.amp == "off"
