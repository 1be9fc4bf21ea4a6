"""Evaluation: verification exactly as insightface reports it (LFW, CFP-FP, AgeDB-30 .bin sets)
and faiss-based 1:N identification.

Import what you need from its submodule (``facekd.eval.verification``, ``facekd.eval.identification``...);
faiss and onnxruntime load only with the submodules that need them.
"""
