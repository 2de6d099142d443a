"""Type aliases shared across the package."""

from __future__ import annotations

from typing import Any

import jax

type PRNGKey = jax.Array
type Array = jax.Array
type Scalar = float | jax.Array
type ArrayLike = Any
