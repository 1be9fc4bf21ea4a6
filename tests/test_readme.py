"""README.md runs as written: every facekd command in its fenced bash blocks uses only flags its
parser has (and parses completely when nothing is elided), presets are named with the command they
load in, and the shell snippets it shows do what the text says."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from facekd import cli
from facekd.config import PRESET_DIR, from_dict, load_yaml, resolve_preset

README = Path(__file__).resolve().parents[1] / "README.md"
ELIDED = "..."

# the config dataclass behind each training command's --config / --set
CONFIG_CLASSES = {
    "facekd.pipelines.train": ("facekd.pipelines.train", "FaceTrainConfig"),
    "facekd.pipelines.distill": ("facekd.pipelines.distill", "DistillConfig"),
    "facekd.pipelines.classify": ("facekd.pipelines.classify", "ClassifyConfig"),
}


def _config_class(module: str) -> type:
    mod, name = CONFIG_CLASSES[module]
    return getattr(importlib.import_module(mod), name)


def bash_blocks(text: str) -> list[str]:
    """The bodies of the ```bash fenced blocks."""
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def logical_lines(block: str) -> Iterator[str]:
    """Lines with backslash continuations joined."""
    yield from block.replace("\\\n", " ").splitlines()


def facekd_command(line: str) -> tuple[str, list[str]] | None:
    """(module, arguments) of a ``python -m facekd...``, ``torchrun ... -m facekd...`` or
    ``facekd VERB`` command line; None for anything else."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return None
    if not tokens:
        return None
    if tokens[0] in ("python", "python3", "torchrun") and "-m" in tokens:
        i = tokens.index("-m")
        module, args = tokens[i + 1], tokens[i + 2:]
        return (module, args) if module == "facekd" or module.startswith("facekd.") else None
    if tokens[0] == "facekd" and len(tokens) > 1:
        return cli.VERBS[tokens[1]][0], tokens[2:]
    return None


def readme_commands() -> list[tuple[str, list[str], str]]:
    """Every facekd command of README's bash blocks: (module, arguments, the line as written)."""
    found = []
    for block in bash_blocks(README.read_text(encoding="utf-8")):
        for line in logical_lines(block):
            cmd = facekd_command(line)
            if cmd is not None:
                found.append((*cmd, " ".join(line.split())))
    return found


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


def parser_of(module: str) -> argparse.ArgumentParser:
    """The command's argparse parser: its ``build_parser()`` when it has one, else the parser its
    ``main`` builds (caught at ``parse_args``, before anything runs)."""
    mod = importlib.import_module(module)
    if callable(getattr(mod, "build_parser", None)):
        return mod.build_parser()

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Captured(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        mod.main(["--help"])
    except _Captured as got:
        return got.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise AssertionError(f"{module}.main never parsed its arguments")


COMMANDS = readme_commands()


def test_readme_has_the_walk_through_commands() -> None:
    modules = {m for m, _, _ in COMMANDS}
    for needed in ("facekd.data_prep.align", "facekd.data_prep.pack", "facekd.data_prep.make_bin",
                   "facekd.pipelines.train", "facekd.pipelines.distill", "facekd.pipelines.classify",
                   "facekd.eval.verify", "facekd.eval.identify", "facekd.eval.ijb", "facekd.export"):
        assert needed in modules, needed
    assert facekd_command("facekd make-bin --folder a out.bin") == ("facekd.data_prep.make_bin",
                                                                  ["--folder", "a", "out.bin"])
    assert facekd_command("torchrun --nproc_per_node 8 -m facekd.pipelines.distill --data d") == (
        "facekd.pipelines.distill", ["--data", "d"])
    assert facekd_command("python -m bench.bench_ijb") is None


@pytest.mark.parametrize("module,args,line", COMMANDS, ids=[f"{i}:{c[0]}" for i, c in enumerate(COMMANDS)])
def test_readme_command_uses_only_flags_of_its_parser(module: str, args: list[str], line: str) -> None:
    parser = parser_of(module)
    known = set(parser._option_string_actions)  # every option string the parser accepts
    unknown = [a.split("=", 1)[0] for a in args if a.startswith("--") and a.split("=", 1)[0] not in known]
    assert not unknown, f"README: `{line}` uses {unknown}, which `{module}` does not have"
    if ELIDED in args:
        return  # a shortened command: its flags exist, the rest is left to the reader
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            ns = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"README: `{line}` does not parse: {err.getvalue().strip()}")
    if module in ("facekd.pipelines.train", "facekd.pipelines.distill"):
        assert getattr(ns, "data", None) or getattr(ns, "resume", None), f"README: `{line}` needs --data"
    if getattr(ns, "config", None):
        from_dict(_config_class(module), load_yaml(resolve_preset(ns.config)))


def test_walk_through_uses_what_it_built() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Real data, end to end"):text.index("### IJB-B / IJB-C")]
    cmds = [facekd_command(ln) for block in bash_blocks(section) for ln in logical_lines(block)]
    by_module = {}
    for module, args in filter(None, cmds):
        by_module.setdefault(module, []).append(args)
    built_rec = by_module["facekd.data_prep.pack"][0][1]
    built_bin = by_module["facekd.data_prep.make_bin"][0][-1]
    assert (built_rec, built_bin) == ("data/mine", "data/mine_test.bin")
    for module in ("facekd.pipelines.train", "facekd.pipelines.distill"):
        for args in by_module[module]:
            assert args[args.index("--data") + 1] == built_rec
            assert args[args.index("--val-bins") + 1] == built_bin
    (verify,) = by_module["facekd.eval.verify"]
    assert verify[verify.index("--bins") + 1] == built_bin
    (train,) = by_module["facekd.pipelines.train"]
    (distill,) = by_module["facekd.pipelines.distill"]
    teacher_out = train[train.index("--out") + 1]
    assert distill[distill.index("--teacher-weights") + 1] == f"{teacher_out}/backbone.pth"
    assert distill[distill.index("--teacher-head") + 1] == f"{teacher_out}/head.pth"  # the trained critic kept
    (identify,) = by_module["facekd.eval.identify"]
    assert "--out" in identify  # identification.json is only written with --out
    assert "identification.json` only with `--out`" in section
    assert "share one input size" in section


def test_gallery_and_probes_snippet_makes_the_folders(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^for person in aligned_test/\*/; do\n.*?^done\n", text, flags=re.S | re.M)
    assert m, "README shows how to make gallery/ and probes/"
    people = {"ann": ["1.jpg", "2.jpg", "3.jpg"], "bob smith": ["a.jpg"], "cy": ["x.jpg", "y.jpg"]}
    for name, files in people.items():
        (tmp_path / "aligned_test" / name).mkdir(parents=True)
        for f in files:
            (tmp_path / "aligned_test" / name / f).write_bytes(f"{name}/{f}".encode())
    (tmp_path / "aligned_test" / "manifest.jsonl").write_text("{}\n")  # align's own files stay out
    subprocess.run(["bash", "-e", "-c", m.group(0)], cwd=tmp_path, check=True, timeout=30)
    for name, files in people.items():
        assert sorted(p.name for p in (tmp_path / "gallery" / name).iterdir()) == files[:1]
        assert sorted(p.name for p in (tmp_path / "probes" / name).iterdir()) == files[1:]
    assert sorted(p.name for p in (tmp_path / "gallery").iterdir()) == sorted(people)


def _preset_table() -> dict[str, list[str]]:
    rows = re.findall(r"^\| `(facekd\.pipelines\.\w+)` \| (.*) \|$", README.read_text(encoding="utf-8"), flags=re.M)
    return {module: re.findall(r"`([\w.]+)`", cell) for module, cell in rows}


def test_each_preset_is_listed_with_the_command_it_loads_in() -> None:
    table = _preset_table()
    assert set(table) == set(CONFIG_CLASSES)
    listed = [name for names in table.values() for name in names]
    assert sorted(listed) == sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))  # each exactly once
    for module, names in table.items():
        for name in names:
            from_dict(_config_class(module), load_yaml(resolve_preset(name)))  # raises if it does not load
            for other in set(CONFIG_CLASSES) - {module}:
                with pytest.raises(Exception):
                    from_dict(_config_class(other), load_yaml(resolve_preset(name)))


def test_head_pth_claim_matches_what_each_command_writes() -> None:
    from facekd.pipelines.classify import ClassifyTask
    from facekd.pipelines.distill import DistillTask
    from facekd.pipelines.train import FaceTrainTask

    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "`classify` writes the same except `head.pth`" in text
    assert ClassifyTask.head_key is None  # the engine writes head.pth only for a task's head_key
    assert FaceTrainTask.head_key == "head" and DistillTask.head_key == "head"


def test_cpu_try_of_classify_is_minutes_not_hours() -> None:
    (digits,) = [(m, a) for m, a, _ in COMMANDS if m == "facekd.pipelines.classify" and "digits:size=16" in a]
    ns = parser_of(digits[0]).parse_args(digits[1])
    steps_per_epoch = 21  # digits:size=16 at the default batch 64 (measured: 2 epochs ran 42 steps)
    steps = int(getattr(ns, "max_steps", 0) or 0) or int(getattr(ns, "epochs", 240)) * steps_per_epoch
    assert steps <= 200, f"the CPU try runs {steps} steps (about 1.5 s each on a 2-core CPU)"


def test_preset_table_is_what_each_command_lists_in_its_help() -> None:
    from facekd.config import presets_for

    for module, names in _preset_table().items():
        assert sorted(names) == sorted(presets_for(_config_class(module))), module
        help_text = " ".join(parser_of(module).format_help().split())
        listed = re.search(r"presets for this command: ([^)]*)\)", help_text)
        assert listed, f"{module} --help names its presets"
        shown = [] if listed.group(1) == "none" else [n.strip() for n in listed.group(1).split(",")]
        assert sorted(shown) == sorted(names), module


def test_demo_report_real_data_commands_use_real_flags() -> None:
    """The demo prints real-data commands into report.md: the same check as README's."""
    from facekd.pipelines.demo import REAL_DATA_COMMANDS

    cmds = [c for c in map(facekd_command, logical_lines(REAL_DATA_COMMANDS)) if c is not None]
    assert len(cmds) >= 6
    for module, args in cmds:
        test_readme_command_uses_only_flags_of_its_parser(module, args, " ".join([module, *args]))
    identify = next(args for module, args in cmds if module == "facekd.eval.identify")
    assert "--out" in identify


TORCHRUN_FLAGS = {"--nnodes", "--node_rank", "--master_addr", "--master_port", "--nproc_per_node"}
BENCH_FLAGS = {"--quick"}  # bench/*.py scripts, not facekd commands


def test_every_flag_the_readme_names_exists_in_a_facekd_command() -> None:
    """Prose included: a renamed or removed option leaves no stale name behind."""
    known = set(TORCHRUN_FLAGS | BENCH_FLAGS)
    for module, _ in cli.VERBS.values():
        known |= set(parser_of(module)._option_string_actions)
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", README.read_text(encoding="utf-8")))
    assert not named - known, f"README names options no facekd command has: {sorted(named - known)}"
