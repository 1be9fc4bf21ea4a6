"""Entry points (``python -m facekd.pipelines.NAME``): train, distill, classify, demo.

Import what you need from its submodule (``facekd.pipelines.train``, ``facekd.pipelines.distill``...).
"""
