"""Hypothesis profiles of the unit tests.

`make mutation` runs them with `--hypothesis-profile=mutation`: only the explicit
`@example`s of the property tests run, so every mutant that the run counts as killed was
killed by a written-down case (a boundary or a regression the random search once found),
never by the luck of a draw, and two runs give the same numbers.
"""

from __future__ import annotations

from hypothesis import Phase, settings

settings.register_profile("mutation", phases=[Phase.explicit], database=None)
