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
