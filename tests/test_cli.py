"""The `facekd` console script dispatches verbs to their `python -m` modules."""
from __future__ import annotations

import importlib

from facekd import cli


def test_every_verb_module_has_main():
    for verb, (module, _desc) in cli.VERBS.items():
        assert callable(importlib.import_module(module).main), verb


def test_usage_and_unknown_verb(capsys):
    assert cli.main([]) == 0
    assert "summary" in capsys.readouterr().out
    assert cli.main(["no-such-verb"]) == 2


def test_unknown_verb_suggests_the_close_one(capsys):
    assert cli.main(["make_bin", "--folder", "x", "out.bin"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == ("facekd: unknown verb 'make_bin'; did you mean 'make-bin'? "
                                   "(facekd make-bin --folder x out.bin)")
    assert cli.suggest_verb("distil") == "distill"
    assert cli.suggest_verb("Verfy") == "verify"
    assert cli.suggest_verb("zzzz") is None
    assert cli.main(["zzzz"]) == 2
    assert "did you mean" not in capsys.readouterr().err
