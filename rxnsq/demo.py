"""The README's demo: start a local nsqd, publish a few messages, read them back.

``python -m rxnsq.demo`` starts its own nsqd (through :mod:`rxnsq.testing`) unless
``--nsqd-tcp-address`` is given, and stops it at the end, leaving no process behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from contextlib import ExitStack

from reactivex import operators as ops

from .connection import Connection
from .message import Message
from .testing import NsqdProcess

TOPIC = "rxnsq_demo"
CHANNEL = "demo"


async def run_demo(address: str, count: int) -> int:
    """Publish ``count`` JSON events over snappy, consume them as an Rx stream, finish each."""
    producer = Connection(address, snappy=True)
    consumer = Connection(address, snappy=True)
    granted = await producer.connect()
    await consumer.connect()
    print(f"connected to nsqd {granted.version} at {address} (snappy: {granted.snappy})")

    events = [
        {"n": i, "kind": "click" if i % 3 else "view", "at": time.time()} for i in range(count)
    ]
    await producer.mpub(TOPIC, [json.dumps(e).encode() for e in events])
    print(f"published {count} events in one MPUB")

    done = asyncio.get_running_loop().create_future()
    clicks: list[int] = []

    def handle(message: Message[dict[str, object]]) -> None:
        if message.value["kind"] == "click":
            clicks.append(int(message.value["n"]))  # type: ignore[call-overload]
        message.fin()

    consumer.messages.pipe(
        ops.map(lambda m: m.with_value(json.loads(m.body))),
        ops.take(count),
    ).subscribe(on_next=handle, on_completed=lambda: done.set_result(None))
    await consumer.subscribe(TOPIC, CHANNEL)
    consumer.rdy(min(count, consumer.max_rdy_count))
    await asyncio.wait_for(done, 30)
    print(f"consumed {count} messages, {len(clicks)} clicks: {sorted(clicks)[:10]}...")
    print(f"finished {consumer.finished}, in flight {consumer.in_flight}")
    await consumer.close()
    await producer.close()
    return 0 if consumer.finished == count else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rxnsq-demo", description=__doc__)
    parser.add_argument("--nsqd-tcp-address", help="use this nsqd instead of starting one")
    parser.add_argument("--count", type=int, default=30, help="messages to publish (default 30)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with ExitStack() as stack:
        address = args.nsqd_tcp_address
        if address is None:
            nsqd = stack.enter_context(NsqdProcess())
            address = nsqd.tcp_address
            print(f"started nsqd (pid {nsqd.pid}) on {address}")
        status = asyncio.run(run_demo(address, args.count))
    print("nsqd stopped" if args.nsqd_tcp_address is None else "done")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
