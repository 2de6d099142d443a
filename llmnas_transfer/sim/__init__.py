"""Layer 1, simulate: the refinement dynamics and the JAX simulator.

Pure JAX below :mod:`~llmnas_transfer.sim.candidates`: :mod:`~llmnas_transfer.sim.registry`
(datasets and tasks), :mod:`~llmnas_transfer.sim.params` (parameter PyTrees and the
shipped defaults), :mod:`~llmnas_transfer.sim.keys` (the one key scheme),
:mod:`~llmnas_transfer.sim.dynamics` (init, transition, emissions, step),
:mod:`~llmnas_transfer.sim.samplers` (exact counting samplers),
:mod:`~llmnas_transfer.sim.summary` (the summary path),
:mod:`~llmnas_transfer.sim.expectation` (exact expectations) and
:mod:`~llmnas_transfer.sim.gaps` (the gap and regime definitions).
:mod:`~llmnas_transfer.sim.candidates` runs them over a grid and returns an
:class:`xarray.Dataset`.
"""
