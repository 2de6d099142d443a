"""Type aliases shared across the package."""

from __future__ import annotations

from typing import Any, TypeAlias

import jax

PRNGKey: TypeAlias = jax.Array
Array: TypeAlias = jax.Array
Scalar: TypeAlias = float | jax.Array
ArrayLike: TypeAlias = Any
