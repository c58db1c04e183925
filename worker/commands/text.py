"""Names and other user-controlled text made safe to print: in a terminal table and in CSV.

An agent's name, a config's key or a file name is anybody's input. In a table, control
characters (ANSI escapes, newlines, carriage returns, bidirectional overrides) are shown as
escapes, so a name can neither clear an operator's screen nor forge a row. In CSV, a text
cell that a spreadsheet would take for a formula (starting with `=`, `+`, `-`, `@`, a tab
or a carriage return: the OWASP CSV-injection list) is prefixed with `'`; numbers are
never touched (a numeric column keeps `-1.5` as a number), so only text cells go through
`csv_text`.
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def printable(text: str) -> str:
    """`text` with every character that is not printable shown as its Python escape
    (`\\x1b`, `\\n`, `\\u202e`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def csv_text(text: str) -> str:
    """A CSV text cell that no spreadsheet reads as a formula: `'` before a leading `=`,
    `+`, `-`, `@`, tab or carriage return."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text
