"""The functional core: pure trading decisions with exact `Decimal` money and no I/O."""
