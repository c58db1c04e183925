"""`make mutation`'s tools: decorated functions are mutated, and the report lets no skip hide."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from mutmut.mutation.file_mutation import mutate_file_contents

from tools.mutation_report import (
    MutantKey,
    functions_with_code,
    problems,
    read_equivalents,
    report_file,
)
from tools.mutmut_run import install

SAMPLE = '''\
from __future__ import annotations

from dataclasses import dataclass
from functools import wraps
from typing import Protocol


def doubled(func):
    @wraps(func)
    def wrapper(*args, **kwargs):
        return 2 * func(*args, **kwargs)

    return wrapper


@doubled
def add(a: int, b: int) -> int:
    return a + b


def label(name: str) -> str:
    return f"<{name}>"


class Priced(Protocol):
    @property
    def price(self) -> int: ...


@dataclass(frozen=True)
class Basket:
    """Items."""

    items: tuple[int, ...]

    @property
    def total(self) -> int:
        """Sum plus one."""
        return sum(self.items) + 1
'''


def _generate(root: Path) -> dict[str, str]:
    """mutmut's generated file, spans and (empty) results of `pkg/sample.py` under `root`;
    returns the mutants' names by the line they produce."""
    install()
    source_path = root / "pkg" / "sample.py"
    source_path.parent.mkdir(parents=True)
    source_path.write_text(SAMPLE, encoding="utf-8")
    mutated = mutate_file_contents("pkg/sample.py", SAMPLE)
    target = root / "mutants" / "pkg"
    target.mkdir(parents=True)
    (target / "sample.py").write_text(mutated.code, encoding="utf-8")
    spans = {name: [s.start, s.end] for name, s in mutated.line_span_by_function_name.items()}
    (target / "sample.py.spans").write_text(json.dumps({"version": 1, "spans": spans}))
    by_line: dict[str, str] = {}
    lines = mutated.code.splitlines()
    for name in mutated.mutant_names:
        start, end = spans[name]
        body = [line.strip() for line in lines[start - 1 : end] if "return" in line]
        by_line.setdefault(body[-1], name)
    return by_line


def _write_results(root: Path, codes: dict[str, int]) -> None:
    meta = {
        "exit_code_by_key": {f"pkg.sample.{name}": code for name, code in codes.items()},
        "hash_by_function_name": {},
        "type_check_error_by_key": {},
        "durations_by_key": {},
        "estimated_durations_by_key": {},
    }
    (root / "mutants" / "pkg" / "sample.py.meta").write_text(json.dumps(meta))


def _import_generated(root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("sample", root / "mutants/pkg/sample.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sample"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["sample"]
    return module


def test_a_decorated_functions_mutant_runs_inside_its_decorators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = _generate(tmp_path)
    module = _import_generated(tmp_path)
    monkeypatch.setenv("MUTANT_UNDER_TEST", "")
    assert module.add(1, 2) == 6  # doubled(1 + 2)
    assert module.Basket((1, 2)).total == 4

    monkeypatch.setenv("MUTANT_UNDER_TEST", f"sample.{names['return a - b']}")
    assert module.add(1, 2) == -2  # doubled(1 - 2): the decorator still wraps the mutant
    monkeypatch.setenv("MUTANT_UNDER_TEST", f"sample.{names['return sum(self.items) - 1']}")
    assert module.Basket((1, 2)).total == 2  # still a property


def test_functions_with_code_include_decorated_ones_and_leave_out_protocol_members() -> None:
    assert functions_with_code(SAMPLE) == ["doubled", "add", "label", "Basket.total"]


def test_a_function_without_mutants_is_a_skip_unless_nothing_in_it_can_be_mutated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = _generate(tmp_path)
    monkeypatch.chdir(tmp_path)
    # Results as a run that skipped `add` would leave them (mutmut without the patch).
    _write_results(tmp_path, {name: 1 for name in names.values() if "x_add_" not in name})

    report = report_file(Path("pkg/sample.py"), Path("mutants"), Counter())

    assert report.skipped == ["add"]
    assert report.nothing_to_mutate == ["label"]  # an f-string: no operator applies
    assert "sample.py: functions with code but no mutant: add" in problems([report], [], 90)


def test_listed_equivalents_leave_the_score_and_a_stale_entry_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = _generate(tmp_path)
    monkeypatch.chdir(tmp_path)
    survivor = names["return sum(self.items) - 1"]
    _write_results(tmp_path, {name: 0 if name == survivor else 1 for name in names.values()})
    listed = MutantKey(
        "sample.py", "Basket.total", "return sum(self.items) + 1", "return sum(self.items) - 1"
    )
    stale = MutantKey("sample.py", "add", "return a + b", "return a * b")
    remaining = Counter([listed, stale])

    report = report_file(Path("pkg/sample.py"), Path("mutants"), remaining)

    assert (report.mutants, report.killed, report.equivalent, report.survived) == (
        len(names),
        len(names) - 1,
        1,
        [],
    )
    assert report.score == 100.0
    assert list(remaining.elements()) == [stale]
    assert problems([report], [stale], 90) == [
        "sample.py add: listed as equivalent but no such surviving mutant: "
        "'return a + b' -> 'return a * b'"
    ]


def test_a_survivor_counts_against_the_score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = _generate(tmp_path)
    monkeypatch.chdir(tmp_path)
    survivor = names["return a - b"]
    _write_results(tmp_path, {name: 0 if name == survivor else 1 for name in names.values()})

    report = report_file(Path("pkg/sample.py"), Path("mutants"), Counter())

    assert report.survived == [MutantKey("sample.py", "add", "return a + b", "return a - b")]
    assert report.score == pytest.approx(100 * (len(names) - 1) / len(names))
    assert problems([report], [], 100.0) == [f"sample.py: score {report.score:.1f}% is below 100%"]


def test_equivalents_file_rows_are_read_with_escaped_pipes() -> None:
    text = (
        "# Equivalent mutants\n\n"
        "| file | function | original | mutant | why |\n"
        "|---|---|---|---|---|\n"
        "| a.py | f | `x = a \\| b` | `x = None` | why, with `code` |\n"
    )
    assert read_equivalents(text) == [
        (MutantKey("a.py", "f", "x = a | b", "x = None"), "why, with `code`")
    ]


def test_equivalents_file_code_with_a_backtick_uses_a_double_backtick_span() -> None:
    row = "| a.py | f | ``s = 'a`b'`` | ``s = 'XXa`bXX'`` | a message's text |"
    assert read_equivalents(row) == [
        (MutantKey("a.py", "f", "s = 'a`b'", "s = 'XXa`bXX'"), "a message's text")
    ]
