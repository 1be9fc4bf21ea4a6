"""Partial FC over two gloo processes equals the one-process margin head on the same global batch."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facekd.models.heads import MarginHead, PartialFC, save_full_classifier
from facekd.models.weights import load_classifier

D, C, WORLD = 8, 7, 2
LOCAL_SIZES = (4, 2)  # uneven local batches: the last batch of an epoch may be short on some ranks


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    weight = torch.randn(C, D, generator=g)
    emb = torch.randn(sum(LOCAL_SIZES), D, generator=g)
    labels = torch.tensor([0, 6, 3, -1, 6, 2])
    return weight, emb, labels


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        weight, emb, labels = _global_problem()
        start = sum(LOCAL_SIZES[:rank])
        local = slice(start, start + LOCAL_SIZES[rank])
        head = PartialFC(D, C, s=64.0, m1=1.0, m2=0.5, m3=0.0, sample_rate=1.0)
        head.load_full_weight(weight)
        local_emb = emb[local].clone().requires_grad_(True)
        loss = head(local_emb, labels[local])
        loss.backward()

        sampled = PartialFC(D, 40, sample_rate=0.25)
        sampled_labels = torch.tensor([[1, 5, 33, 38], [20, 21, -1, 39]][rank])
        sampled_loss = sampled(torch.randn(4, D), sampled_labels)
        everywhere = sampled.all_last_samples()

        saved = save_full_classifier(head, Path(out_dir) / "classifier.pt")
        torch.save({
            "loss": loss.detach(), "emb_grad": local_emb.grad, "weight_grad": head.weight.grad,
            "class_start": head.class_start, "num_local": head.num_local,
            "shard_keys": sorted(head.state_dict()), "shard_shape": tuple(head.state_dict()["weight"].shape),
            "full_weight": head.full_weight(), "sampled_loss": sampled_loss.detach(),
            "sampled_local": sampled.last_sample, "sampled_all": everywhere,
            "saved": None if saved is None else str(saved),
        }, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("pfc_ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)] + [{"dir": out}]


def test_shards_cover_every_class_exactly_once(results: list[dict]) -> None:
    ranks = results[:WORLD]
    assert [(r["class_start"], r["num_local"]) for r in ranks] == [(0, 4), (4, 3)]
    assert [r["shard_shape"] for r in ranks] == [(4, D), (3, D)]  # each rank's state dict: its shard only
    assert all(r["shard_keys"] == ["weight"] for r in ranks)


def test_sharded_loss_and_gradients_equal_the_full_head(results: list[dict]) -> None:
    weight, emb, labels = _global_problem()
    head = MarginHead(D, C, s=64.0, m1=1.0, m2=0.5, m3=0.0)
    head.load_full_weight(weight)
    e = emb.clone().requires_grad_(True)
    loss = head(e, labels)
    loss.backward()
    ranks = results[:WORLD]
    for r in ranks:  # the same global loss on every rank
        torch.testing.assert_close(r["loss"], loss.detach(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(torch.cat([r["emb_grad"] for r in ranks]), e.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["weight_grad"] for r in ranks]), head.weight.grad, atol=1e-6, rtol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r["full_weight"], weight)


def test_sampling_keeps_the_global_batch_positives_on_their_ranks(results: list[dict]) -> None:
    ranks = results[:WORLD]
    positives = {1, 5, 33, 38, 20, 21, 39}
    everywhere = ranks[0]["sampled_all"].tolist()
    assert everywhere == ranks[1]["sampled_all"].tolist()
    assert everywhere == ranks[0]["sampled_local"].tolist() + ranks[1]["sampled_local"].tolist()
    assert positives <= set(everywhere)
    assert all(c < 20 for c in ranks[0]["sampled_local"].tolist())  # rank 0 holds classes 0..19
    assert all(c >= 20 for c in ranks[1]["sampled_local"].tolist())
    assert len(ranks[0]["sampled_local"]) == 5 and len(ranks[1]["sampled_local"]) == 5  # 0.25 * 20
    torch.testing.assert_close(ranks[0]["sampled_loss"], ranks[1]["sampled_loss"])


def test_full_classifier_is_saved_once_by_rank_zero(results: list[dict]) -> None:
    ranks, out = results[:WORLD], results[WORLD]["dir"]
    assert ranks[0]["saved"] == str(out / "classifier.pt") and ranks[1]["saved"] is None
    weight, _, _ = _global_problem()
    torch.testing.assert_close(load_classifier(out / "classifier.pt"), weight)
