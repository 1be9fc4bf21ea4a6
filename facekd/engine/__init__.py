"""The one training engine every pipeline uses: a pipeline hands a ``TrainTask`` to the ``Trainer``,
which owns DDP, AMP, schedules, checkpoints, resume, logs and exports.

Import what you need from its submodule (``facekd.engine.trainer``, ``facekd.engine.task``...).
"""
