"""Idempotency keys are NFC since issue 20: the README's query finds the keys stored before
in another form, whose redelivery would no longer match them."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import asyncpg
import pytest

from tests.builders import MINT, add_user

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_query() -> str:
    found = re.search(r"`(SELECT id, idempotency_key FROM trading_signals WHERE [^`]+)`",
                      README.read_text(encoding="utf-8"))  # fmt: skip
    assert found, "the README no longer gives the query for keys that are not NFC"
    return found.group(1)


async def test_the_readmes_query_finds_the_stored_keys_that_are_not_nfc(
    db_conn: asyncpg.Connection,
) -> None:
    user_id = await add_user(db_conn)
    keys = ["plain-1", "café-2", unicodedata.normalize("NFD", "café-3"), "\u212b-4"]
    ids = [
        await db_conn.fetchval(
            "INSERT INTO trading_signals (token_address, signal_type, signal_strength, user_id,"
            " idempotency_key) VALUES ($1, 'Velocity', 3, $2, $3) RETURNING id",
            MINT,
            user_id,
            key,
        )
        for key in keys
    ]
    rows = await db_conn.fetch(_readme_query())
    # The NFD "café-3", and the Angstrom sign, whose NFC is the letter Å.
    assert sorted((r["id"], r["idempotency_key"]) for r in rows) == [
        (ids[2], keys[2]),
        (ids[3], keys[3]),
    ]
