"""Workflows built from the layers.

:mod:`~llmnas_transfer.study.derive` (derive the shipped defaults),
:mod:`~llmnas_transfer.study.reproduce` (the reference study),
:mod:`~llmnas_transfer.study.sweeps` (streaming, resumable sweeps),
:mod:`~llmnas_transfer.study.scenarios` (published runs in the model) and
:mod:`~llmnas_transfer.study.lemur` (the real LEMUR accuracies).
"""
