"""The config caches are bounded in bytes, and a stored config over AGENT_CONFIG_MAX_BYTES is
never read: it is an invalid config with a reason naming its size and the cap."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from worker.domain.config_reading import OversizedConfig, capped, read_config, text_bytes
from worker.handlers import config_cache
from worker.handlers.config_cache import (
    ENTRY_OVERHEAD,
    READINGS_MAX_BYTES,
    ByteBoundedCache,
    ConfigTexts,
    config_of_text,
)


def test_the_cache_drops_the_least_recent_entries_beyond_its_bound() -> None:
    cache: ByteBoundedCache[str, int] = ByteBoundedCache(100)
    cache.put("a", 1, 40)
    cache.put("b", 2, 40)
    assert cache.get("a") == 1  # now the most recent: "b" goes first
    cache.put("c", 3, 40)
    assert ("a" in cache, "b" in cache, "c" in cache) == (True, False, True)
    assert cache.bytes == 80
    cache.put("a", 4, 10)  # replaced: its weight counted once
    assert (cache.get("a"), cache.bytes) == (4, 50)


def test_an_entry_heavier_than_the_bound_is_not_held_and_drops_nothing() -> None:
    cache: ByteBoundedCache[str, int] = ByteBoundedCache(100)
    cache.put("a", 1, 60)
    cache.put("huge", 2, 101)
    assert ("huge" in cache, cache.get("a"), cache.bytes) == (False, 1, 60)


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 150)), max_size=200))
@example([(1, 100), (2, 1), (1, 100)])
@example([(1, 101)])
def test_the_cache_never_holds_more_than_its_bound(puts: list[tuple[int, int]]) -> None:
    cache: ByteBoundedCache[int, int] = ByteBoundedCache(100)
    weights: dict[int, int] = {}
    for key, weight in puts:
        cache.put(key, weight, weight)
        weights[key] = weight
        held = [k for k in weights if k in cache]
        assert cache.bytes == sum(weights[k] for k in held) <= 100
        assert key in cache or weight > 100  # the newest is held unless alone too heavy


def test_config_texts_hold_at_most_their_bound_of_large_texts() -> None:
    configs = ConfigTexts(max_bytes=1_000_000)
    text = '{"notes": "' + "x" * 60_000 + '"}'
    agents = list(range(100))  # versions: 6 MB of texts in all
    for version_id in agents:
        configs.update({version_id: text})
        assert configs.texts.bytes <= 1_000_000
    held = [a for a in agents if not configs.missing([a])]
    assert held == agents[-len(held) :]  # the most recent
    assert len(held) == 1_000_000 // (len(text) + ENTRY_OVERHEAD)


def test_decoded_configs_are_held_up_to_their_bound_in_bytes() -> None:
    # Distinct configs of 1 MB each (valid: the notes are an unknown key): far more than
    # the bound if all were held, as the old cache (by count, 8,192 texts) held them.
    for i in range(40):
        text = '{"notes": "' + str(i) * 1_000_000 + '"}'
        assert config_of_text(text).unknown_keys == ("notes",)
    assert config_cache._READINGS.bytes <= READINGS_MAX_BYTES


def test_a_config_over_the_cap_reads_as_invalid_with_its_size_and_the_cap() -> None:
    text = '{"notes": "' + "é" * 40_000 + '"}'
    oversized = capped(text, 65_536)
    assert oversized == OversizedConfig(text_bytes(text), 65_536)
    assert text_bytes(text) == len(text.encode()) == 80_013
    reading = read_config(oversized)
    assert reading.config is None
    assert reading.error == (
        "invalid trading_config: the stored config is 80,013 bytes, over the 65,536-byte "
        "cap (AGENT_CONFIG_MAX_BYTES)"
    )
    assert capped(text, 80_013) == text  # at the cap: read
    assert capped(None, 1024) is None
