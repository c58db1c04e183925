"""The per-file report of a mutation run (`make mutation`), from mutmut's results in `mutants/`.

Per file of `worker/domain/`: the functions with code found in the source (by `ast`, not
from mutmut's output), the functions mutmut mutated, those with code but nothing any mutmut
operator changes (named), mutants, killed, survived (a mutant no test reaches counts as
survived), equivalent (listed in `docs/mutation-equivalents.md`) and the score, killed /
(mutants - equivalent). A function with something to mutate and no mutant was skipped.
Exits non-zero, saying why, when a function is skipped, a `pragma: no mutate` hides code, a
mutant was not run, a listed equivalent is not a surviving mutant any more, or a file
scores below the threshold.

A mutant is named by a key that survives edits elsewhere in the file (mutmut's numbers
do not): its function and the line it changes, before and after, as `difflib` shows the
original copy against the mutant in mutmut's generated file.

Usage: `python -m tools.mutation_report [--min-score 90]` from the repository's root.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst
from mutmut.mutation.file_mutation import create_mutations

from tools.mutmut_run import install

SOURCE_DIR = Path("worker/domain")
MUTANTS_DIR = Path("mutants")
EQUIVALENTS_FILE = Path("docs/mutation-equivalents.md")
MIN_SCORE = 90.0
CLASS_SEPARATOR = "ǁ"
# mutmut's exit codes (mutmut.stats.status_by_exit_code): killed by a failing test or by
# pytest's internal error, or by a timeout; survived, or no test reached the function.
KILLED_CODES = frozenset({1, 3, 24, -24, 36, 152, 255})
SURVIVED_CODES = frozenset({0, 5, 33})
NO_MUTATE_PRAGMA = "pragma: no mutate"


@dataclass(frozen=True, slots=True, order=True)
class MutantKey:
    """A mutant by what it changes: file, function (`Class.method`), line before and after."""

    file: str
    function: str
    original: str
    mutated: str

    def as_row(self) -> str:
        """The key as a row of the equivalents file, without its reason."""
        code = [f"`{text.replace('|', chr(92) + '|')}`" for text in (self.original, self.mutated)]
        return f"| {self.file} | {self.function} | {code[0]} | {code[1]} |"


@dataclass(slots=True)
class FileReport:
    """One file's figures, plus what makes it fail."""

    file: str
    functions: list[str]
    mutated_functions: list[str]
    nothing_to_mutate: list[str] = field(default_factory=list)
    mutants: int = 0
    killed: int = 0
    survived: list[MutantKey] = field(default_factory=list)
    equivalent: int = 0
    unfinished: list[str] = field(default_factory=list)
    pragmas: list[int] = field(default_factory=list)

    @property
    def skipped(self) -> list[str]:
        """Functions with something to mutate that have no mutant."""
        return sorted(
            set(self.functions) - set(self.mutated_functions) - set(self.nothing_to_mutate)
        )

    @property
    def score(self) -> float:
        """killed / (mutants - equivalent) in %; 100 when every mutant is equivalent."""
        counted = self.mutants - self.equivalent
        return 100.0 if counted == 0 else 100.0 * self.killed / counted


def has_code(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """False for a body of a docstring, `...` and `pass` only (a protocol's member)."""
    body = list(function.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return any(
        not isinstance(stmt, ast.Pass)
        and not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
        for stmt in body
    )


def functions_with_code(source: str) -> list[str]:
    """The functions mutmut gives a trampoline (module functions, methods of module classes)
    that have code, as `name` or `Class.name`; nested classes' methods as `Outer.Inner.name`
    (mutmut never mutates those, so they show up as skipped)."""
    found: list[str] = []

    def visit(body: Iterable[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and has_code(node):
                found.append(prefix + node.name)
            elif isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")

    visit(ast.parse(source).body, "")
    return found


def functions_with_mutations(path: str, source: str) -> set[str]:
    """The functions that mutmut's operators find something to mutate in, decorated or not
    (`tools.mutmut_run`'s rule); the rest of `functions_with_code` has nothing to mutate
    (such as a function that only formats an f-string)."""
    install()
    module, mutations, _classes, _functions = create_mutations(path, source)
    name_of: dict[cst.CSTNode, str] = {}
    for node in module.body:
        if isinstance(node, cst.FunctionDef):
            name_of[node] = node.name.value
        elif isinstance(node, cst.ClassDef) and isinstance(node.body, cst.IndentedBlock):
            for method in node.body.body:
                if isinstance(method, cst.FunctionDef):
                    name_of[method] = f"{node.name.value}.{method.name.value}"
    return {
        name_of[m.contained_by_top_level_function]
        for m in mutations
        if m.contained_by_top_level_function in name_of
    }


def function_of_mangled(mangled: str) -> str:
    """`x_name` -> `name`; `xǁClassǁname` -> `Class.name` (mutmut's trampoline names)."""
    if mangled.startswith("x" + CLASS_SEPARATOR):
        _, class_name, name = mangled.split(CLASS_SEPARATOR)
        return f"{class_name}.{name}"
    return mangled.removeprefix("x_")


def changed_lines(original: str, mutant: str) -> tuple[str, str]:
    """The lines a mutant changes, stripped and joined by ` / `: (before, after)."""
    before: list[str] = []
    after: list[str] = []
    for line in difflib.ndiff(original.splitlines(), mutant.splitlines()):
        if line.startswith("- "):
            before.append(line[2:].strip())
        elif line.startswith("+ "):
            after.append(line[2:].strip())
    return " / ".join(before), " / ".join(after)


def _read_spans(path: Path) -> dict[str, tuple[int, int]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {name: (start, end) for name, (start, end) in data["spans"].items()}


def mutant_keys(
    file: str, mutated_source: str, spans: dict[str, tuple[int, int]]
) -> dict[str, MutantKey]:
    """Each mutant's key (by its generated name, `x_f__mutmut_3`), from the generated file."""
    lines = mutated_source.splitlines()

    def text(name: str) -> str:
        start, end = spans[name]
        return "\n".join(lines[start - 1 : end])

    keys: dict[str, MutantKey] = {}
    for name in spans:
        mangled, _, suffix = name.rpartition("__mutmut_")
        if suffix == "orig":
            continue
        # The copies differ in their names too: compare the mutant under the original's name.
        mutant = text(name).replace(name, f"{mangled}__mutmut_orig")
        before, after = changed_lines(text(f"{mangled}__mutmut_orig"), mutant)
        keys[name] = MutantKey(file, function_of_mangled(mangled), before, after)
    return keys


_ROW = re.compile(r"^\|(?P<cells>.*)\|\s*$")


def _cells(row: str) -> list[str]:
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", row)]


def _code(cell: str) -> str:
    """The text of a Markdown code span: `x` or ``x`y`` (for code with a backtick)."""
    ticks = len(cell) - len(cell.lstrip("`"))
    if ticks and cell.endswith("`" * ticks) and len(cell) > 2 * ticks:
        return cell[ticks:-ticks].strip()
    return cell


def read_equivalents(text: str) -> list[tuple[MutantKey, str]]:
    """The table rows of the equivalents file: `| file | function | original | mutant | why |`,
    code in code spans, a `|` in code written `\\|`."""
    entries: list[tuple[MutantKey, str]] = []
    for line in text.splitlines():
        match = _ROW.match(line.strip())
        if match is None:
            continue
        cells = _cells(match["cells"])
        if len(cells) != 5 or cells[0] in {"file", ""} or set(cells[0]) <= {"-", ":"}:
            continue
        file, function, original, mutated, why = cells
        entries.append((MutantKey(file, function, _code(original), _code(mutated)), why))
    return entries


def report_file(source_path: Path, mutants_dir: Path, equivalent: Counter[MutantKey]) -> FileReport:
    """Figures of one source file; consumes the equivalents it uses from `equivalent`."""
    source = source_path.read_text(encoding="utf-8")
    name = source_path.name
    functions = functions_with_code(source)
    mutable = functions_with_mutations(str(source_path), source)
    report = FileReport(
        file=name,
        functions=functions,
        mutated_functions=[],
        nothing_to_mutate=[f for f in functions if f not in mutable],
    )
    report.pragmas = [
        number for number, line in enumerate(source.splitlines(), 1) if NO_MUTATE_PRAGMA in line
    ]
    meta_path = mutants_dir / f"{source_path}.meta"
    if not meta_path.exists():
        return report
    exit_codes: dict[str, int | None] = json.loads(meta_path.read_text(encoding="utf-8"))[
        "exit_code_by_key"
    ]
    keys = mutant_keys(
        name,
        (mutants_dir / source_path).read_text(encoding="utf-8"),
        _read_spans(mutants_dir / f"{source_path}.spans"),
    )
    mutated: set[str] = set()
    for full_name, code in sorted(exit_codes.items()):
        mutant = full_name.rpartition(".")[2]
        mutated.add(function_of_mangled(mutant.rpartition("__mutmut_")[0]))
        report.mutants += 1
        if code in KILLED_CODES:
            report.killed += 1
        elif code in SURVIVED_CODES:
            key = keys[mutant]
            if equivalent[key] > 0:
                equivalent[key] -= 1
                report.equivalent += 1
            else:
                report.survived.append(key)
        else:
            report.unfinished.append(f"{full_name} (exit code {code})")
    report.mutated_functions = sorted(mutated)
    return report


def problems(
    reports: Sequence[FileReport], unused: Iterable[MutantKey], min_score: float
) -> list[str]:
    """Why the run fails, one sentence each; empty when it passes."""
    found: list[str] = []
    for r in reports:
        if r.skipped:
            found.append(f"{r.file}: functions with code but no mutant: {', '.join(r.skipped)}")
        if r.pragmas:
            lines = ", ".join(map(str, r.pragmas))
            found.append(f"{r.file}: '{NO_MUTATE_PRAGMA}' on line(s) {lines}")
        found.extend(f"{r.file}: mutant not run or unclear: {u}" for u in r.unfinished)
        if r.score < min_score:
            found.append(f"{r.file}: score {r.score:.1f}% is below {min_score:.0f}%")
    found.extend(
        f"{k.file} {k.function}: listed as equivalent but no such surviving mutant: "
        f"{k.original!r} -> {k.mutated!r}"
        for k in unused
    )
    return found


def _row(r: FileReport) -> str:
    return (
        f"| {r.file} | {len(r.functions)} | {len(r.mutated_functions)} | "
        f"{len(r.nothing_to_mutate)} | {r.mutants} | {r.killed} | {len(r.survived)} | "
        f"{r.equivalent} | {r.score:.1f}% |"
    )


def render(reports: Sequence[FileReport]) -> str:
    """The per-file table (Markdown), then a total row."""
    head = (
        "| file | functions | mutated | nothing to mutate | mutants | killed | survived "
        "| equivalent | score |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    total = FileReport(
        file="**all**",
        functions=[f"{r.file}:{f}" for r in reports for f in r.functions],
        mutated_functions=[f"{r.file}:{f}" for r in reports for f in r.mutated_functions],
        nothing_to_mutate=[f"{r.file}:{f}" for r in reports for f in r.nothing_to_mutate],
        mutants=sum(r.mutants for r in reports),
        killed=sum(r.killed for r in reports),
        survived=[k for r in reports for k in r.survived],
        equivalent=sum(r.equivalent for r in reports),
    )
    return "\n".join([head, *map(_row, [*reports, total])])


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report; 0 when every file passes, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-score", type=float, default=MIN_SCORE)
    parser.add_argument("--source-dir", type=Path, default=SOURCE_DIR)
    parser.add_argument("--mutants-dir", type=Path, default=MUTANTS_DIR)
    parser.add_argument("--equivalents", type=Path, default=EQUIVALENTS_FILE)
    args = parser.parse_args(argv)

    listed = read_equivalents(args.equivalents.read_text(encoding="utf-8"))
    remaining = Counter(key for key, _why in listed)
    reports = [
        report_file(path, args.mutants_dir, remaining)
        for path in sorted(args.source_dir.glob("*.py"))
    ]
    print(render(reports))
    idle = [f"{r.file} {f}" for r in reports for f in r.nothing_to_mutate]
    if idle:
        print("\nFunctions with code but nothing mutmut's operators change:", ", ".join(idle))
    survivors = sorted(k for r in reports for k in r.survived)
    if survivors:
        print("\nSurviving mutants (not listed as equivalent):")
        for k in survivors:
            print(k.as_row())
    failures = problems(reports, sorted(remaining.elements()), args.min_score)
    if failures:
        print("\nFAILED:", *failures, sep="\n  ")
        return 1
    print(f"\nOK: no function skipped, every file at or above {args.min_score:.0f}%.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
