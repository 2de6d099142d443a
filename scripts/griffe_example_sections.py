"""griffe extension for the API reference: read ``Example`` sections as ``Examples``.

The package's NumPy-style docstrings title their doctest section ``Example`` (singular);
griffe's NumPy parser only knows ``Examples``, and would otherwise render the doctest
lines as plain Markdown. Loaded by mkdocstrings through ``mkdocs.yml``
(``extensions: [scripts/griffe_example_sections.py]``).
"""

from __future__ import annotations

import re

import griffe

_SINGULAR = re.compile(r"^(\s*)Example\n(\s*)-------\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example`` / ``-------`` section headers to ``Examples`` / ``--------``."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102
        doc = obj.docstring
        if doc is not None and "Example" in doc.value:
            doc.value = _SINGULAR.sub(r"\1Examples\n\2--------", doc.value)
