"""One call that readies the teacher for a distillation run: load it, place it on the run's device,
attach (building them with every rank) its feature caches, and fit its classifier when the weights
carried none.

Called on every process of a run with the run's ``Collective`` (rank, world size, ``share`` and
``barrier`` from ``facekd.engine.distributed``): every rank embeds its share of each cache on its
own device (see ``facekd.distill.cache``), then opens the whole cache read-only; every rank fits
the classifier from the cached embeddings on its device and rank 0's centres are shared, so the
critic is bit-identical on every rank. Save the fitted classifier beside the run's outputs
(``Teacher.save_classifier``) and pass it as ``head`` on resume.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from facekd.data.batch import LABELED_SOURCE, UNLABELED_SOURCE
from facekd.data.transforms import only_flips
from facekd.distill.cache import SINGLE_PROCESS, STALL_TIMEOUT, Collective, TeacherCacheSet, build_cache
from facekd.distill.teacher import Teacher, check_classifier_fingerprint, load_teacher
from facekd.log import get_logger

log = get_logger(__name__)

__all__ = ["TeacherSetup", "prepare_teacher"]


@dataclass
class TeacherSetup:
    """The ready teacher, whether its cache is used, and the classifier-fit report (empty when loaded)."""

    teacher: Teacher
    cached: bool
    fit_report: dict[str, Any] = field(default_factory=dict)


def prepare_teacher(weights: str | os.PathLike[str] | None, arch: str | None, *, labeled: Any,
                    transform: Any = None, unlabeled: Any = None, unlabeled_transform: Any = None,
                    head: str | os.PathLike[str] | None = None, scale: float = 64.0, online: bool = False,
                    cache_dir: str | os.PathLike[str] | None = None, rebuild_cache: bool = False,
                    refine_epochs: int = 0, batch_size: int = 128, workers: int = 0, seed: int = 0,
                    device: torch.device | str = "cpu", amp_dtype: torch.dtype | str | None = "auto",
                    channels_last: bool = False, collective: Collective = SINGLE_PROCESS,
                    stall_timeout: float = STALL_TIMEOUT, check_head: bool = False,
                    check: Callable[[Teacher], None] | None = None, **arch_options: Any) -> TeacherSetup:
    """Load the teacher (``load_teacher``) onto ``device`` (autocast ``amp_dtype``, channels_last as
    training), cache its embeddings of ``labeled`` (and ``unlabeled``) under ``cache_dir`` unless it
    runs online, and fit its classifier on ``labeled`` if it has none.

    ``transform``: the labeled set's training transform; the cache is used only when its
    randomness is flips alone (else, or with ``online`` or no ``cache_dir``, the teacher runs in the
    loop). Classification teachers are always online (their feature maps are not cached).
    ``check_head``: ``head`` is a classifier this pipeline fitted earlier (``teacher_head.pth`` on
    resume); TeacherMismatchError unless it was fitted for these teacher weights.
    ``check``: called with the loaded teacher before anything is embedded (the command's own
    checks, e.g. that the teacher takes the student's input size); it raises to stop.
    """
    teacher = load_teacher(weights, arch, head=head, scale=scale, online=online, **arch_options)
    if check is not None:
        check(teacher)
    if check_head and head is not None:
        check_classifier_fingerprint(head, teacher)
    teacher.place(device, amp_dtype, channels_last)
    pool_transform = unlabeled_transform if unlabeled_transform is not None else transform
    cached = (teacher.kind == "face" and not online and cache_dir is not None and only_flips(transform)
              and (unlabeled is None or only_flips(pool_transform)))
    if teacher.kind == "face" and not online and cache_dir is not None and not cached:
        log.warning("training augmentation goes beyond flips: the teacher runs in the loop (no feature cache)")
    caches: dict[int, Any] = {}
    if cached:
        assert cache_dir is not None
        sources = [(LABELED_SOURCE, labeled, transform)]
        if unlabeled is not None:
            sources.append((UNLABELED_SOURCE, unlabeled, pool_transform))
        for source, data, tf in sources:
            caches[source] = build_cache(cache_dir, teacher, data, tf, source=source, rebuild=rebuild_cache,
                                         batch_size=batch_size, workers=workers, collective=collective,
                                         stall_timeout=stall_timeout)
        teacher.attach_cache(TeacherCacheSet(caches), transform)
    report: dict[str, Any] = {}
    if teacher.kind == "face" and not teacher.has_classifier:
        # rank 0 fits on its device; every rank gets its centres (one critic, bit for bit, on all ranks)
        if collective.rank == 0:
            labels, num_classes = labeled.labels, labeled.num_classes
            options = {"refine_epochs": refine_epochs, "seed": seed}
            if LABELED_SOURCE in caches:
                report = teacher.fit_classifier_from_cache(caches[LABELED_SOURCE], labels, num_classes, **options)
            else:
                emb = teacher.embed_dataset(labeled, transform, batch_size=batch_size, workers=workers)
                report = teacher.fit_classifier(emb, labels, num_classes, **options)
            report["teacher_sha256"] = teacher.fingerprint()
        if collective.world_size > 1:
            centres, report = collective.share((teacher.classifier_centres() if collective.rank == 0 else None,
                                                report))
            teacher.set_classifier(centres)
    return TeacherSetup(teacher, cached, report)
