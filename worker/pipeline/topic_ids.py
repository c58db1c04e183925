"""Topic ids from the brokers: how the worker tells a recreated topic from the one it consumed.

A topic's id (a UUID the broker gives a topic when it is created, Kafka 2.8 and later) is the
only thing that tells a deleted and recreated topic of the same name, or another cluster's
topic, from the topic the stored offsets belong to. aiokafka (0.14) speaks Metadata up to
version 5, which has no topic ids, so this module adds the one request that has them
(Metadata v10, a "flexible" version: compact arrays and tagged fields, which aiokafka's
protocol types support) and sends it over the client's own connections.

A broker that does not speak Metadata v10 (before Kafka 2.8) gives no ids: `topic_ids`
returns None and the worker falls back to comparing the stored offsets with the log's
bounds (`worker.pipeline.offset_checks`).
"""

from __future__ import annotations

import base64
from io import BytesIO

from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    AbstractType,
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

_UUID_BYTES = 16
_METADATA_API_KEY = 3


class _Uuid(AbstractType):  # type: ignore[misc]  # aiokafka is untyped: its base class is Any
    """Kafka's UUID: 16 bytes on the wire."""

    @classmethod
    def encode(cls, value: bytes) -> bytes:
        return value

    @classmethod
    def decode(cls, data: BytesIO) -> bytes:
        value = data.read(_UUID_BYTES)
        if len(value) != _UUID_BYTES:
            raise ValueError("Buffer underrun decoding a UUID")
        return value


class _MetadataResponseV10(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = _METADATA_API_KEY
    API_VERSION = 10
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", _Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_authorized_operations", Int32),
        ("tags", TaggedFields),
    )


class _MetadataRequestV10(RequestStruct):  # type: ignore[misc]  # aiokafka is untyped
    FLEXIBLE_VERSION = True
    API_KEY = _METADATA_API_KEY
    API_VERSION = 10
    RESPONSE_TYPE = _MetadataResponseV10
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields)
            ),
        ),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class _MetadataRequest(Request[_MetadataRequestV10]):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = _METADATA_API_KEY

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[_MetadataRequestV10]) -> _MetadataRequestV10:
        null_id = bytes(_UUID_BYTES)
        topics: list[tuple[bytes, str, dict[int, bytes]]] = [(null_id, t, {}) for t in self._topics]
        return request_struct_class(topics, False, False, False, {})


def format_topic_id(raw: bytes) -> str | None:
    """Kafka's text form of a topic id (URL-safe base64, no padding, as `kafka-topics.sh
    --describe` prints it); None for the all-zero id (no id)."""
    if raw == bytes(_UUID_BYTES):
        return None
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def parse_topics(response: _MetadataResponseV10) -> dict[str, str | None]:
    """Each topic's id from a Metadata v10 response (None where the broker gave none or the
    topic does not exist)."""
    found: dict[str, str | None] = {}
    for topic in response.to_object()["topics"]:
        found[topic["name"]] = None if topic["error_code"] else format_topic_id(topic["topic_id"])
    return found


async def topic_ids(client: AIOKafkaClient, topics: list[str]) -> dict[str, str | None] | None:
    """The id of each of `topics` as the brokers know it now, by name; None when the brokers
    give no topic ids (older than Kafka 2.8). `client` is an aiokafka `AIOKafkaClient` (the
    one inside a consumer or an admin client), already bootstrapped.

    Kafka errors (no broker reachable, a timeout) are raised to the caller.
    """
    node = client.get_random_node()
    try:
        response = await client.send(node, _MetadataRequest(topics))
    except NotImplementedError:
        return None  # the broker's Metadata versions stop below 10: no topic ids
    return parse_topics(response)
