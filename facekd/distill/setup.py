"""One call that readies the teacher for a distillation run: load it, attach (building on the main
process) its feature caches, and fit its classifier when the weights carried none.

Called on every process of a run: ``is_main`` builds the caches, ``barrier`` (e.g. the engine's
``distributed.barrier``) lets the other ranks wait for them, then every rank opens them read-only
and fits the classifier from the same cached embeddings with the same seed (identical on every
rank; nothing to broadcast). Save the fitted classifier beside the run's outputs
(``Teacher.save_classifier``) and pass it as ``head`` on resume.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from facekd.data.batch import LABELED_SOURCE, UNLABELED_SOURCE
from facekd.data.transforms import only_flips
from facekd.distill.cache import TeacherCacheSet, open_or_build_cache
from facekd.distill.teacher import Teacher, load_teacher
from facekd.log import get_logger

log = get_logger(__name__)

__all__ = ["TeacherSetup", "prepare_teacher"]


@dataclass
class TeacherSetup:
    """The ready teacher, whether its cache is used, and the classifier-fit report (empty when loaded)."""

    teacher: Teacher
    cached: bool
    fit_report: dict[str, float] = field(default_factory=dict)


def prepare_teacher(weights: str | os.PathLike[str] | None, arch: str | None, *, labeled: Any,
                    transform: Any = None, unlabeled: Any = None, unlabeled_transform: Any = None,
                    head: str | os.PathLike[str] | None = None, scale: float = 64.0, online: bool = False,
                    cache_dir: str | os.PathLike[str] | None = None, rebuild_cache: bool = False,
                    refine_epochs: int = 0, batch_size: int = 128, workers: int = 0, seed: int = 0,
                    is_main: bool = True, barrier: Callable[[], None] | None = None,
                    **arch_options: Any) -> TeacherSetup:
    """Load the teacher (``load_teacher``), cache its embeddings of ``labeled`` (and ``unlabeled``)
    under ``cache_dir`` unless it runs online, and fit its classifier on ``labeled`` if it has none.

    ``transform``: the labeled set's training transform; the cache is used only when its
    randomness is flips alone (else, or with ``online`` or no ``cache_dir``, the teacher runs in the
    loop). Classification teachers are always online (their feature maps are not cached).
    """
    teacher = load_teacher(weights, arch, head=head, scale=scale, online=online, **arch_options)
    pool_transform = unlabeled_transform if unlabeled_transform is not None else transform
    cached = (teacher.kind == "face" and not online and cache_dir is not None and only_flips(transform)
              and (unlabeled is None or only_flips(pool_transform)))
    if teacher.kind == "face" and not online and cache_dir is not None and not cached:
        log.warning("training augmentation goes beyond flips: the teacher runs in the loop (no feature cache)")
    caches: dict[int, Any] = {}
    if cached:
        sources = [(LABELED_SOURCE, labeled, transform)]
        if unlabeled is not None:
            sources.append((UNLABELED_SOURCE, unlabeled, pool_transform))
        if is_main:
            for source, data, tf in sources:
                open_or_build_cache(cache_dir, teacher, data, tf, source=source, build=True, rebuild=rebuild_cache,
                                    batch_size=batch_size, workers=workers)
        if barrier is not None:
            barrier()
        for source, data, tf in sources:
            caches[source] = open_or_build_cache(cache_dir, teacher, data, tf, source=source, build=False)
        teacher.attach_cache(TeacherCacheSet(caches), transform)
    report: dict[str, float] = {}
    if teacher.kind == "face" and not teacher.has_classifier:
        labels, num_classes = labeled.labels, labeled.num_classes
        options = {"refine_epochs": refine_epochs, "seed": seed}
        if LABELED_SOURCE in caches:
            report = teacher.fit_classifier_from_cache(caches[LABELED_SOURCE], labels, num_classes, **options)
        else:
            emb = teacher.embed_dataset(labeled, transform, batch_size=batch_size, workers=workers)
            report = teacher.fit_classifier(emb, labels, num_classes, **options)
    return TeacherSetup(teacher, cached, report)
