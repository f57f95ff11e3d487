"""Put messages on a real nsqd for a test, through one plain connection (no Writer), so a
test of the Writer or the Reader does not depend on the code under test to set itself up."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..connection import Connection

__all__ = ["publish"]


async def publish(address: str, topic: str, bodies: Sequence[bytes], chunk: int = 500) -> None:
    """MPUB ``bodies`` to ``topic`` on the nsqd at ``address``, ``chunk`` at a time, and
    return once nsqd confirmed all of them (pipelined on one connection)."""
    conn = Connection(address)
    await conn.connect()
    try:
        await asyncio.gather(
            *(conn.mpub(topic, bodies[i : i + chunk]) for i in range(0, len(bodies), chunk))
        )
    finally:
        await conn.close()
