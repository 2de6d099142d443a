"""Layer 2, fit: the NumPyro model of observed runs, its fits and its checks.

:mod:`~llmnas_transfer.fit.model` (the model, sharing the simulator's dynamics),
:mod:`~llmnas_transfer.fit.inference` (NUTS and SVI fits into an ArviZ ``DataTree``) and
:mod:`~llmnas_transfer.fit.sbc` (prior predictive, recovery, simulation-based calibration).
"""
