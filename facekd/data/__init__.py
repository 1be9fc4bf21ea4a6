"""Data layer: RecordIO and .bin I/O, image folders, synthetic identities, datasets, unlabeled pools,
batches, reproducible loaders and transforms.

Import what you need from its submodule (``facekd.data.recordio``, ``facekd.data.datasets``...);
the package itself imports nothing, so ``import facekd.data`` stays light.
"""
