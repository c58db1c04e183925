"""Whether a stored offset still belongs to the log it is about to be used in (pure).

On assignment the worker compares each partition's stored next offset with the partition's
log as the brokers have it now: its start (the first offset still held), its end (the
next offset to be written, read_committed) and, where the broker gives one, the topic's
id (`worker.pipeline.topic_ids`). `check` decides:

- **consume** from the stored offset: it lies within the log, and the topic's id is the
  one stored (or either id is unknown).
- **blocked**, the partition is not consumed at all, when the stored offset cannot belong to
  this log: the topic's id differs from the stored one (`topic_recreated`), or the stored
  offset lies past the log's end (`past_log_end`: the topic was deleted and recreated, the
  worker points at another cluster, or the broker lost acknowledged records). Consuming
  would seek past records nobody processed, or fall back to the log's start and drop every
  record below the stored offset as "already applied". Blocked partitions stay blocked
  until an operator decides (`signal-worker offsets reset`), and the next assignment checks
  again.
- **consume from the log start**, with the count of offsets never processed, when the
  stored offset lies below the log's start: retention (or delete-records) removed records
  before the worker read them. They are gone; the worker goes on and says so loudly.

What is detected without topic ids (a broker older than Kafka 2.8, or offsets stored before
the ids were kept and not yet refreshed): only a recreated log whose end is still below the
stored offset. A recreated topic that has already received as many records as the stored
offset looks like the old one; with topic ids (every Kafka 2.8+ broker) it is caught
whatever its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Blocked(StrEnum):
    """Why a partition is not consumed (the label of the blocked-partitions metric)."""

    TOPIC_RECREATED = "topic_recreated"
    PAST_LOG_END = "past_log_end"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one assigned partition: consume from `seek_to`, or not at all."""

    seek_to: int | None
    blocked: Blocked | None = None
    never_processed: int = 0
    detail: str = ""

    @property
    def is_blocked(self) -> bool:
        """True when the partition must not be consumed."""
        return self.blocked is not None


def check(
    stored: int,
    stored_topic_id: str | None,
    *,
    start: int,
    end: int,
    topic_id: str | None,
) -> Verdict:
    """The verdict for a partition whose stored next offset is `stored`, in a log holding
    offsets [`start`, `end`) of the topic whose id is `topic_id` (None: unknown)."""
    if stored_topic_id is not None and topic_id is not None and stored_topic_id != topic_id:
        return Verdict(
            None,
            Blocked.TOPIC_RECREATED,
            detail=(
                f"the topic's id is {topic_id}, the stored offset {stored} belongs to topic id "
                f"{stored_topic_id}: the topic was deleted and recreated, or this is another "
                "cluster's"
            ),
        )
    if stored > end:
        return Verdict(
            None,
            Blocked.PAST_LOG_END,
            detail=(
                f"the stored offset {stored} is past the log end {end}: the topic was deleted "
                "and recreated, or this is another cluster's"
            ),
        )
    if stored < start:
        missed = start - stored
        return Verdict(
            start,
            never_processed=missed,
            detail=(
                f"the stored offset {stored} is below the log start {start}: {missed} "
                "offset(s) were removed from the log (retention or delete-records) before "
                "they were processed"
            ),
        )
    return Verdict(stored)


def resolving_command(topic: str) -> str:
    """The command an operator runs, with every worker of the group stopped, to consume a
    blocked topic again from the start of its log (the topic's id is stored with it)."""
    return f"signal-worker offsets reset --topic {topic} --to-earliest"
