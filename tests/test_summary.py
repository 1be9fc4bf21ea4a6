"""Model summaries: parameter and MAC counts against hand-computed and published figures, CLI."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from facekd.models.registry import build_backbone
from facekd.models.summary import count_macs, count_parameters, main, summarize


class _TinyConvNet(nn.Module):
    """conv3x3 (3->4, no bias) -> BN -> global pool -> Linear(4->2): MACs are easy to count by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def test_count_parameters_and_macs_by_hand() -> None:
    model = _TinyConvNet()
    assert count_parameters(model) == 4 * 3 * 9 + 2 * 4 + 4 * 2 + 2
    # conv: 4 outputs x 3 inputs x 9 taps at each of 8x8 positions; fc: 4 x 2
    assert count_macs(model, 8) == 4 * 3 * 9 * 64 + 4 * 2


def test_count_macs_restores_training_mode_and_counts_depthwise() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False), nn.BatchNorm2d(3)).train()
    assert count_macs(model, 4) == 3 * 9 * 16
    assert model.training


def test_count_macs_on_a_real_model_matches_meta_device() -> None:
    model = build_backbone("mbf", input_size=32, width=0.25)
    with torch.device("meta"):
        meta_model = build_backbone("mbf", input_size=32, width=0.25)
    assert count_macs(model, 32) == count_macs(meta_model, 32) > 0


def test_summarize_mbf_matches_published_figures() -> None:
    summary = summarize("mbf")
    assert summary["parameters"] == pytest.approx(2.06e6, rel=0.01)
    assert summary["macs"] == pytest.approx(0.45e9, rel=0.10)
    assert summary["feature_map_shape"] == (512, 7, 7)
    assert (summary["embedding_size"], summary["input_size"], summary["kind"]) == (512, 112, "face")


def test_summarize_r100_and_options() -> None:
    r100 = summarize("r100")
    assert round(r100["parameters"] / 1e6, 2) == 65.16
    assert r100["feature_map_shape"] == (512, 7, 7)
    small = summarize("mbf", input_size=56, width=0.5, embedding_size=128)
    assert small["feature_map_shape"] == (256, 4, 4)
    assert small["embedding_size"] == 128
    assert small["macs"] < summarize("mbf", input_size=56)["macs"] < summarize("mbf")["macs"]


def test_summarize_classifier() -> None:
    summary = summarize("resnet8x4", num_classes=10)
    assert summary["num_classes"] == 10 and "embedding_size" not in summary
    assert summary["feature_map_shape"] == (256, 8, 8)
    assert summary["input_size"] == 32
    assert summary["parameters"] == count_parameters(build_backbone("resnet8x4", num_classes=10))


def test_cli_prints_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mbf"]) == 0
    text = capsys.readouterr().out
    assert "model:           mbf" in text
    assert "2.06 M" in text
    assert "multiply-accumulates; insightface's 'GFLOPs' figures are MACs" in text
    assert "at 1x3x112x112" in text
    assert "embedding size:  512" in text
    assert "512 x 7 x 7" in text


def test_cli_json_and_classifier_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wrn_16_2", "--num-classes", "10", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_classes"] == 10 and summary["feature_map_shape"] == [128, 8, 8]


def test_cli_rejects_options_of_the_other_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["r18", "--num-classes", "10"])
    assert exit_info.value.code == 2
    assert "--num-classes applies to classifier models; 'r18' is a face model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mbf", "--width", "-1"])
    assert "width must be a positive number" in capsys.readouterr().err


def test_cli_help_lists_models_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("r100", "mbf_large", "wrn_40_2", "--input-size", "--width", "--embedding-size",
                 "--num-classes", "MACs"):
        assert word in text
