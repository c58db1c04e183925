"""The stored offset against its partition's log: consume, blocked (with why), or consumed
from the log start with the count never processed (`worker.pipeline.offset_checks`)."""

from __future__ import annotations

import pytest

from worker.pipeline.offset_checks import Blocked, Verdict, check, resolving_command
from worker.pipeline.topic_ids import format_topic_id

OLD = "Qy4E_usSRFi7UALX_enQ9g"
NEW = "baauIxKITMyoTqKs_Zk7JQ"


@pytest.mark.parametrize(
    ("stored", "stored_id", "start", "end", "topic_id", "seek_to", "blocked", "missed"),
    [
        # Within the log: consume from the stored offset (ids equal, or either unknown).
        (5, OLD, 0, 10, OLD, 5, None, 0),
        (0, OLD, 0, 0, OLD, 0, None, 0),
        (10, OLD, 0, 10, OLD, 10, None, 0),  # at the end: nothing new yet
        (5, None, 0, 10, NEW, 5, None, 0),  # stored before ids were kept: adopted
        (5, OLD, 0, 10, None, 5, None, 0),  # a broker without ids: bounds only
        # Past the end: never consumed (the old worker fell back to 0 and dropped 0..10).
        (11, OLD, 0, 10, OLD, None, Blocked.PAST_LOG_END, 0),
        (11, None, 0, 10, None, None, Blocked.PAST_LOG_END, 0),
        (120, None, 0, 0, None, None, Blocked.PAST_LOG_END, 0),
        # Another topic id: never consumed, however long the new log already is.
        (5, OLD, 0, 10, NEW, None, Blocked.TOPIC_RECREATED, 0),
        (500, OLD, 0, 10, NEW, None, Blocked.TOPIC_RECREATED, 0),
        # Below the start: retention removed records first; consumed from the start.
        (2, OLD, 7, 10, OLD, 7, None, 5),
        (0, None, 1, 1, None, 1, None, 1),
    ],
)
def test_check_decides_from_the_stored_offset_the_log_bounds_and_the_topic_id(
    stored: int,
    stored_id: str | None,
    start: int,
    end: int,
    topic_id: str | None,
    seek_to: int | None,
    blocked: Blocked | None,
    missed: int,
) -> None:
    verdict = check(stored, stored_id, start=start, end=end, topic_id=topic_id)
    assert (verdict.seek_to, verdict.blocked, verdict.never_processed) == (
        seek_to,
        blocked,
        missed,
    )
    assert verdict.is_blocked is (blocked is not None)


def test_a_blocked_verdict_says_what_is_wrong_with_numbers_and_ids() -> None:
    past = check(120, None, start=0, end=3, topic_id=None)
    assert past.detail == (
        "the stored offset 120 is past the log end 3: the topic was deleted and recreated, "
        "or this is another cluster's"
    )
    other = check(1, OLD, start=0, end=3, topic_id=NEW)
    assert OLD in other.detail and NEW in other.detail
    gone = check(2, None, start=7, end=9, topic_id=None)
    assert "5 offset(s) were removed from the log" in gone.detail


def test_a_verdict_within_the_log_has_no_detail() -> None:
    assert check(3, OLD, start=0, end=9, topic_id=OLD) == Verdict(3)


def test_the_resolving_command_names_the_topic() -> None:
    assert resolving_command("sig") == "signal-worker offsets reset --topic sig --to-earliest"


def test_topic_ids_are_kafkas_text_form_and_zero_is_none() -> None:
    assert format_topic_id(bytes(16)) is None
    raw = bytes(range(16))
    # As Kafka's Uuid.toString: URL-safe base64 without the padding, 22 characters.
    assert format_topic_id(raw) == "AAECAwQFBgcICQoLDA0ODw"
