"""Loading users' weight files: safe loading, layout detection, strict loads, classifier shards."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from facekd.models.heads import MarginHead, save_full_classifier
from facekd.models.registry import build_backbone
from facekd.models.weights import (
    FACEKD_KEYS, StateDictMismatchError, WeightsFileError, backbone_state_dict, detect_format, load_backbone,
    load_classifier, load_state_dict_strict, load_weights_file, make_facekd_checkpoint, merge_classifier_shards,
    rank_sibling_files, save_weights_file, strip_wrapper_prefixes,
)

SMALL = {"input_size": 32, "width": 0.125, "embedding_size": 16}


class _WritesMarker:
    """Unpickling this object would run a shell command creating a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def r18() -> nn.Module:
    return build_backbone("r18", **SMALL).eval()


def _same_outputs(a: nn.Module, b: nn.Module, size: int = 32) -> None:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


# -- safe loading ---------------------------------------------------------------------------------

def test_missing_corrupt_truncated_and_non_dict_files_raise_errors_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsFileError, match=r"nope\.pt: file not found"):
        load_weights_file(tmp_path / "nope.pt")
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights")
    with pytest.raises(WeightsFileError, match=r"notes\.pt: is not a readable torch file"):
        load_weights_file(text)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(50, 50)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsFileError, match=r"truncated\.pt: is not a readable torch file"):
        load_weights_file(truncated)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsFileError, match=r"empty\.pt: is not a readable torch file"):
        load_weights_file(empty)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(WeightsFileError, match=r"list\.pt: holds a list, expected a dict"):
        load_weights_file(listed)
    with pytest.raises(WeightsFileError, match="is an ONNX model"):
        load_weights_file(_touch(tmp_path / "model.onnx"))


def _touch(p: Path) -> Path:
    p.write_bytes(b"x")
    return p


@pytest.mark.parametrize("writer", ["torch_save", "raw_pickle"])
def test_pickle_carrying_code_is_refused_and_never_executed(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "backbone.pth"
    payload = {"conv1.weight": torch.zeros(1), "evil": _WritesMarker(marker)}
    if writer == "torch_save":
        torch.save(payload, evil)
    else:
        with open(evil, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(WeightsFileError) as info:
        load_weights_file(evil)
    message = str(info.value)
    assert str(evil) in message
    assert "objects other than tensors" in message and "refuses to execute" in message
    assert not marker.exists()
    with pytest.raises(WeightsFileError):
        load_backbone("r18", evil, **SMALL)
    with pytest.raises(WeightsFileError):
        load_classifier(evil)
    assert not marker.exists()


def test_save_weights_file_is_atomic_and_round_trips(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "w.pt"
    save_weights_file({"a": torch.arange(3)}, target)
    assert torch.equal(load_weights_file(target)["a"], torch.arange(3))
    assert [p.name for p in target.parent.iterdir()] == ["w.pt"]  # no temporary file left behind


# -- layouts and strict loading -------------------------------------------------------------------

def test_plain_state_dict_and_module_prefix_load_into_the_backbone(tmp_path: Path, r18: nn.Module) -> None:
    plain = tmp_path / "backbone.pth"
    torch.save(r18.state_dict(), plain)
    loaded = load_backbone("r18", plain, **SMALL)
    assert not loaded.training
    _same_outputs(loaded, r18)

    wrapped = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in r18.state_dict().items()}, wrapped)
    _same_outputs(load_backbone("r18", wrapped, **SMALL), r18)
    assert strip_wrapper_prefixes({"module._orig_mod.a": 1}) == {"a": 1}
    assert strip_wrapper_prefixes({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}


def test_nested_state_dict_under_model_loads(tmp_path: Path, r18: nn.Module) -> None:
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": r18.state_dict(), "accuracy": 0.75}, path)
    assert detect_format(load_weights_file(path), path).name == "nested_state_dict"
    _same_outputs(load_backbone("r18", path, **SMALL), r18)


def test_wrong_architecture_or_width_gives_a_mismatch_report(tmp_path: Path, r18: nn.Module) -> None:
    path = tmp_path / "backbone.pth"
    torch.save(r18.state_dict(), path)
    with pytest.raises(StateDictMismatchError) as info:
        load_backbone("mbf", path, **SMALL)
    message = str(info.value)
    assert "'mbf'" in message and "width=0.125" in message and str(path) in message
    assert "missing key(s)" in message and "unexpected key(s)" in message
    assert "conv1.weight [8, 3, 3, 3]" in message  # the file's keys are listed with their shapes
    assert "--arch" in message
    with pytest.raises(StateDictMismatchError) as info:
        load_backbone("r18", path, input_size=32, width=0.25, embedding_size=16)
    message = str(info.value)
    assert "key(s) with another shape" in message and "conv1.weight: file [8, 3, 3, 3] vs model [16, 3, 3, 3]" in message
    with pytest.raises(WeightsFileError, match="does not name its architecture.*--arch"):
        load_backbone(None, path)


def test_missing_batchnorm_counters_are_tolerated(r18: nn.Module) -> None:
    sd = {k: v for k, v in r18.state_dict().items() if not k.endswith("num_batches_tracked")}
    fresh = build_backbone("r18", **SMALL).eval()
    load_state_dict_strict(fresh, sd, "r18")
    _same_outputs(fresh, r18)


def test_facekd_checkpoint_carries_arch_options_and_head(tmp_path: Path, r18: nn.Module) -> None:
    head = MarginHead(16, 5)
    ckpt = make_facekd_checkpoint("r18", SMALL, r18, head=head, head_name="arcface", config={"lr": 0.1},
                                  epoch=3)
    assert set(FACEKD_KEYS) <= set(ckpt) and ckpt["epoch"] == 3
    path = save_weights_file(ckpt, tmp_path / "last.pt")
    _same_outputs(load_backbone(None, path), r18)  # arch and options come from the checkpoint
    torch.testing.assert_close(load_classifier(path), head.weight.detach())
    with pytest.raises(WeightsFileError, match="architecture 'r18', not 'mbf'"):
        load_backbone("mbf", path)
    with pytest.raises(ValueError, match="may not replace core keys: format"):
        make_facekd_checkpoint("r18", SMALL, r18, format="x")
    future = dict(ckpt, version=99)
    torch.save(future, tmp_path / "future.pt")
    with pytest.raises(WeightsFileError, match="version 99 is not supported"):
        load_backbone(None, tmp_path / "future.pt")


def test_backbone_only_file_has_no_classifier_and_head_file_has_no_backbone(tmp_path: Path, r18: nn.Module) -> None:
    backbone = tmp_path / "backbone.pth"
    torch.save(r18.state_dict(), backbone)
    assert load_classifier(backbone) is None
    head_file = tmp_path / "head.pt"
    weight = torch.randn(9, 16)
    torch.save({"weight": weight}, head_file)
    torch.testing.assert_close(load_classifier(head_file), weight)
    with pytest.raises(WeightsFileError, match="holds no backbone weights"):
        backbone_state_dict(load_weights_file(head_file), head_file)


def test_save_full_classifier_in_one_process(tmp_path: Path) -> None:
    head = MarginHead(8, 6)
    path = save_full_classifier(head, tmp_path / "head.pt")
    torch.testing.assert_close(load_classifier(path), head.weight.detach())


# -- arcface_torch multi-rank checkpoints -----------------------------------------------------------

def _write_arcface_run(out: Path, r18: nn.Module, weight: torch.Tensor, world: int, name: str = "checkpoint") -> list[Path]:
    sizes = [weight.shape[0] // world + int(r < weight.shape[0] % world) for r in range(world)]
    shards = torch.split(weight, sizes)
    paths = []
    for rank, shard in enumerate(shards):
        path = out / f"{name}_gpu_{rank}.pt"
        if name == "checkpoint":
            torch.save({"epoch": 4, "global_step": 1000,
                        "state_dict_backbone": {f"module.{k}": v for k, v in r18.state_dict().items()},
                        "state_dict_softmax_fc": {"weight": shard.clone()},
                        "state_optimizer": {"state": {}, "param_groups": []},
                        "state_lr_scheduler": {"last_epoch": 4}}, path)
        else:
            torch.save({"weight": shard.clone()}, path)
        paths.append(path)
    return paths


def test_arcface_torch_checkpoint_shards_merge_in_rank_order(tmp_path: Path, r18: nn.Module) -> None:
    weight = torch.randn(10, 16)
    paths = _write_arcface_run(tmp_path, r18, weight, world=3)  # shards of 4, 3, 3 classes
    torch.testing.assert_close(merge_classifier_shards(paths), weight)
    assert rank_sibling_files(paths[2]) == paths
    for path in paths:  # any rank's file finds its siblings
        torch.testing.assert_close(load_classifier(path), weight)
    _same_outputs(load_backbone("r18", paths[1], **SMALL), r18)
    with pytest.raises(WeightsFileError, match="not one run's split of 10 classes"):
        merge_classifier_shards([paths[1], paths[0], paths[2]])
    paths[1].unlink()
    with pytest.raises(WeightsFileError, match=r"rank\(s\) \[1\] are missing"):
        load_classifier(paths[0])


def test_older_softmax_fc_shards_merge(tmp_path: Path, r18: nn.Module) -> None:
    weight = torch.randn(7, 16)
    paths = _write_arcface_run(tmp_path, r18, weight, world=2, name="softmax_fc")
    torch.testing.assert_close(load_classifier(paths[1]), weight)
    with pytest.raises(WeightsFileError, match="holds no backbone weights"):
        load_backbone("r18", paths[0], **SMALL)


def test_mbf_state_dict_round_trip(tmp_path: Path) -> None:
    mbf = build_backbone("mbf", input_size=32, width=0.25, embedding_size=16).eval()
    path = tmp_path / "mbf.pth"
    torch.save(mbf.state_dict(), path)
    _same_outputs(load_backbone("mbf", path, input_size=32, width=0.25, embedding_size=16), mbf)
