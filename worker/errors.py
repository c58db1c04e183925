"""The worker's exception hierarchy; `consumer.py` alone maps these to ack, retry or dead-letter."""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class InvalidMessage(WorkerError):  # noqa: N818 - the style guide's name
    """A record that can never be processed: dead-letter it with this reason and move on."""


class DomainError(WorkerError):
    """A broken invariant: dead-letter and alert."""


class ServiceUnavailable(WorkerError):  # noqa: N818 - reads as the condition
    """A service (PostgreSQL, Kafka) could not be reached after the bounded retries."""


class MigrationError(WorkerError):
    """The schema files and the database disagree (an applied file edited, a file failed)."""


class UsageError(WorkerError):
    """A command was called with arguments it cannot work with."""
