"""Data preparation: detect, align (5-point ArcFace template) and crop faces; pack folders into
RecordIO; build verification .bin files.

The names below are imported lazily from their submodules on first use.
"""
from __future__ import annotations

from facekd._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "align_face": "facekd.data_prep.align",
    "Aligner": "facekd.data_prep.align",
    "AlignOptions": "facekd.data_prep.align",
    "run_align": "facekd.data_prep.align",
    "FaceDetector": "facekd.data_prep.detectors",
    "build_detector": "facekd.data_prep.detectors",
    "register_detector": "facekd.data_prep.detectors",
    "pack_folder": "facekd.data_prep.pack",
    "scan_identities": "facekd.data_prep.pack",
    "build_bin": "facekd.data_prep.make_bin",
    "read_lfw_pairs": "facekd.data_prep.make_bin",
    "sample_folder_pairs": "facekd.data_prep.make_bin",
    "DataPrepError": "facekd.data_prep.errors",
    "DetectorModelError": "facekd.data_prep.errors",
    "OutputExistsError": "facekd.data_prep.errors",
})
