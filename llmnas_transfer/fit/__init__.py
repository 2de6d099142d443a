"""Layer 2, fit: the NumPyro model of observed runs, its fits and its checks.

:mod:`~llmnas_transfer.fit.model` (the model, sharing the simulator's dynamics);
the steps of a fit, composed by :func:`~llmnas_transfer.fit.inference.fit_runs`:
:mod:`~llmnas_transfer.fit.preparation` (hierarchy and run arrays),
:mod:`~llmnas_transfer.fit.laplace` (NUTS's Laplace start),
:mod:`~llmnas_transfer.fit.sampling` (NUTS and SVI draws) and
:mod:`~llmnas_transfer.fit.assemble` (the ArviZ ``DataTree``);
:mod:`~llmnas_transfer.fit.fitfile` (fit files) and
:mod:`~llmnas_transfer.fit.checks` (prior predictive, recovery, simulation-based calibration).
"""
