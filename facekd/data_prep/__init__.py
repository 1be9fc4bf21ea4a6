"""Data preparation: detect, align (5-point ArcFace template) and crop faces; pack folders into
RecordIO; build verification .bin files.

Import what you need from its submodule (``facekd.data_prep.align``, ``facekd.data_prep.pack``...).
"""
