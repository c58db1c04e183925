"""`mutmut run` with decorated functions mutated too (mutmut 3.8.1, pinned in pyproject.toml).

mutmut 3 skips every decorated function except `@staticmethod` / `@classmethod`: a copy
of a function (the original and each mutant) keeps its decorators, which would register a
pydantic validator once per copy or turn the copies into `property` objects that the
trampoline cannot call. That left out every `@exact` function, every `@property` and every
pydantic validator of `worker/domain`, silently.

Here a decorated function is mutated like any other, with one change to the code mutmut
generates: the decorators go on the trampoline only, the copies are bare functions. The
trampoline is the function the class or module sees, so each decorator is applied once,
to the same name, as in the source; the trampoline then calls the original or the active
mutant inside whatever the decorators set up (`@exact`'s 60-digit context, the property's
attribute access, the validator's call). Decorators themselves are still never mutated.

Usage: `python -m tools.mutmut_run run --max-children 2` (any `mutmut` command works).
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TypeGuard

import libcst as cst
from libcst.metadata import PositionProvider
from mutmut.__main__ import cli
from mutmut.mutation import file_mutation

MUTMUT_VERSION = "3.8.1"
# Decorators that mutmut already handles itself when alone (its copies keep them).
_BINDING_DECORATORS = frozenset({"staticmethod", "classmethod"})

_original_skip = file_mutation.MutationVisitor._skip_node_and_children
_original_arrangement = file_mutation.function_trampoline_arrangement


def _decorator_name(decorator: cst.Decorator) -> str | None:
    node = decorator.decorator
    if isinstance(node, cst.Call):
        node = node.func
    if isinstance(node, cst.Attribute):
        return node.attr.value
    return node.value if isinstance(node, cst.Name) else None


def is_rewrapped(node: cst.CSTNode) -> TypeGuard[cst.FunctionDef]:
    """True for a decorated function that this runner mutates and mutmut alone would skip."""
    if not isinstance(node, cst.FunctionDef) or not node.decorators:
        return False
    names = {_decorator_name(decorator) for decorator in node.decorators}
    return not names & _BINDING_DECORATORS


def _skip_node_and_children(self: file_mutation.MutationVisitor, node: cst.CSTNode) -> bool:
    if is_rewrapped(node):
        position = self.get_metadata(PositionProvider, node, None)
        if not (
            (position is not None and position.start.line in self._ignored_node_lines)
            or node in self._enum_creation_hooks
            or node.name.value in file_mutation.NEVER_MUTATE_FUNCTION_NAMES
        ):
            return False  # mutate its body; its decorators stay unmutated (cst.Decorator)
    return _original_skip(self, node)


def _function_trampoline_arrangement(
    function: cst.FunctionDef, mutants: Iterable[file_mutation.Mutation], class_name: str | None
) -> tuple[Sequence[Any], Sequence[Any], Sequence[Any], Sequence[str]]:
    if not is_rewrapped(function):
        return _original_arrangement(function, mutants, class_name)
    # The body's nodes are shared with `function`, so the mutations (keyed by node
    # identity) still apply to the bare copy.
    bare = function.with_changes(decorators=[])
    declarations, nodes, assignments, names = _original_arrangement(bare, mutants, class_name)
    trampoline, *copies = nodes
    if not isinstance(trampoline, cst.FunctionDef):
        msg = f"mutmut's trampoline of {function.name.value} is not a function"
        raise TypeError(msg)
    rewrapped = trampoline.with_changes(decorators=[*function.decorators, *trampoline.decorators])
    return declarations, [rewrapped, *copies], assignments, names


def install() -> None:
    """Patch mutmut's mutant generation; refuses any mutmut but the pinned version."""
    version = importlib.metadata.version("mutmut")
    if version != MUTMUT_VERSION:
        msg = f"tools.mutmut_run patches mutmut {MUTMUT_VERSION} internals, found {version}"
        raise SystemExit(msg)
    file_mutation.MutationVisitor._skip_node_and_children = _skip_node_and_children  # type: ignore[method-assign]  # the patch itself
    file_mutation.function_trampoline_arrangement = _function_trampoline_arrangement


def main(argv: Sequence[str]) -> None:
    """Run the mutmut command line with the patch installed."""
    install()
    cli.main(args=list(argv), prog_name="mutmut")


if __name__ == "__main__":
    main(sys.argv[1:])
