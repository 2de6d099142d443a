"""Files: observed runs, simulation results, bundled real data and the one atomic writer.

:mod:`~llmnas_transfer.io.atomic` (atomic, collision-free writes and output-path checks),
:mod:`~llmnas_transfer.io.runs` (observed runs), :mod:`~llmnas_transfer.io.results`
(simulation results) and :mod:`~llmnas_transfer.io.bundled` (LEMUR and published numbers).
"""
