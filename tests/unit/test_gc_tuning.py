"""`worker.runtime.app.tune_gc`: the collector's first threshold raised, start-up objects frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from worker.runtime.app import GC_GEN0_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_raises_the_first_threshold_and_freezes_what_exists() -> None:
    _, gen1, gen2 = gc.get_threshold()
    tune_gc()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, gen1, gen2)
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()  # cycles are still collected
