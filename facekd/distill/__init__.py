"""Distillation: the frozen teacher and its critic, the teacher-feature cache, connectors and the
registry of distillation losses (SRD and baselines).

Import what you need from its submodule (``facekd.distill.teacher``, ``facekd.distill.losses.registry``...).
"""
