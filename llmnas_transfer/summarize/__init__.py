"""Layer 3, summarize: transfer gaps, posterior summaries and figures.

:mod:`~llmnas_transfer.summarize.tables` (tables of simulated studies),
:mod:`~llmnas_transfer.summarize.posterior` (posterior gaps, trajectories, diagnostics) and
:mod:`~llmnas_transfer.summarize.figures` (the study's figures).
"""
