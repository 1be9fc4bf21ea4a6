"""Data layer: RecordIO and .bin I/O, image folders, synthetic identities, datasets, unlabeled pools,
batches, reproducible loaders and transforms.

The names below are imported lazily from their submodules on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "DataFormatError": "facekd.data.errors",
    "DataFileNotFoundError": "facekd.data.errors",
    "decode_image": "facekd.data.image_codec",
    "encode_image": "facekd.data.image_codec",
    "RecordIOReader": "facekd.data.recordio",
    "RecordIOWriter": "facekd.data.recordio",
    "MXFaceRecord": "facekd.data.recordio",
    "FaceRecordWriter": "facekd.data.recordio",
    "write_face_record": "facekd.data.recordio",
    "read_property": "facekd.data.recordio",
    "load_bin": "facekd.data.verification_bin",
    "save_bin": "facekd.data.verification_bin",
    "SyntheticFaces": "facekd.data.synthetic",
    "SyntheticFaceDataset": "facekd.data.synthetic",
    "synthetic_splits": "facekd.data.synthetic",
    "make_pairs": "facekd.data.synthetic",
    "write_grid": "facekd.data.synthetic",
    "export_eval_sets": "facekd.data.synthetic",
    "ImageFolderFaces": "facekd.data.folders",
    "ImageFiles": "facekd.data.folders",
    "FaceDataset": "facekd.data.datasets",
    "open_dataset": "facekd.data.datasets",
    "open_source": "facekd.data.datasets",
    "register_source": "facekd.data.datasets",
    "parse_synthetic_spec": "facekd.data.datasets",
    "open_unlabeled": "facekd.data.pools",
    "Batch": "facekd.data.batch",
    "collate_samples": "facekd.data.batch",
    "LABELED_SOURCE": "facekd.data.batch",
    "UNLABELED_SOURCE": "facekd.data.batch",
    "EpochLoader": "facekd.data.loaders",
    "EpochSampler": "facekd.data.loaders",
    "MixedLoader": "facekd.data.loaders",
    "build_loader": "facekd.data.loaders",
    "build_mixed_loader": "facekd.data.loaders",
    "derive_seed": "facekd.data.loaders",
    "sample_seed": "facekd.data.loaders",
    "open_classification": "facekd.data.classification",
    "open_classification_pool": "facekd.data.classification",
    "open_classification_source": "facekd.data.classification",
    "open_evaluation_data": "facekd.data.classification",
    "classification_transform": "facekd.data.classification",
    "register_classification_source": "facekd.data.classification",
    "limit_per_class": "facekd.data.classification",
    "DataSpecError": "facekd.data.classification",
    "CifarImages": "facekd.data.cifar",
    "CifarNotFoundError": "facekd.data.cifar",
    "CifarUnpickler": "facekd.data.cifar",
    "load_cifar_pickle": "facekd.data.cifar",
    "save_cifar_split": "facekd.data.cifar",
    "DigitsImages": "facekd.data.digits",
    "TinyImageNetImages": "facekd.data.tiny_imagenet",
    "ImageTransform": "facekd.data.transforms",
    "build_transform": "facekd.data.transforms",
    "register_transform": "facekd.data.transforms",
    "face_train_transform": "facekd.data.transforms",
    "face_eval_transform": "facekd.data.transforms",
    "cifar_train_transform": "facekd.data.transforms",
    "cifar_eval_transform": "facekd.data.transforms",
    "only_flips": "facekd.data.transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the defining submodule on first use (keeps ``import facekd.data`` light)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
