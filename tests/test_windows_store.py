"""The store mode of rxnsq.windows against real stores (a SQLite file; a private PostgreSQL
server), without nsqd: messages come from a recording settler, time is the wall clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from reactivex.subject import Subject

from rxnsq import windows
from rxnsq.testing.fakes import Command, FakeConsumer, RecordingSettler
from rxnsq.windows.assign import Window as W


@pytest.fixture(params=["sqlite", "postgres"])
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Any]]:
    """A function making store objects on one shared state (one file / one database)."""
    made: list[Any] = []
    if request.param == "sqlite":

        def make() -> Any:
            made.append(windows.SQLiteStore(tmp_path / "state.db"))
            return made[-1]
    else:
        dsn = request.getfixturevalue("postgres_dsn")

        def make() -> Any:
            made.append(windows.PostgresStore(dsn))
            return made[-1]

    yield make
    for store in made:
        await store.close()


class Consumer:
    """One consumer: a windowed count fed through a Subject, recording results and late."""

    def __init__(
        self,
        store: Any,
        settler: RecordingSettler,
        settle: bool = True,
        redeliver: bool = False,
        **kw: Any,
    ):
        options: dict[str, Any] = {
            "window": windows.tumbling(10),
            "clock": windows.event_time(lambda v: v["t"], delay=2),
            "store": store, "name": "clicks", "tick": 0.05, "lease": 5, "id_retention": 0.2,
        }  # fmt: skip
        options.update(kw)
        self.op = windows.count(key=lambda v: v["k"], **options)
        self.settler = settler
        self.results: list[Any] = []
        self.late: list[Any] = []
        self.op.late.subscribe(self.late.append)
        self.input: Subject[Any] = Subject()

        def take(result: Any) -> None:
            self.results.append(result)
            if settle:
                result.settle()

        self.subscription = self.input.pipe(self.op).subscribe(take)
        if redeliver:  # as nsqd does: a requeued message comes back (a store busy for a moment)
            settle_req = settler.settle_req

            def requeued(message: Any, delay: float | None, backoff: bool) -> None:
                settle_req(message, delay, backoff)
                again = self.settler.message(
                    message.body, message_id=message.id, attempts=message.attempts + 1
                ).with_value(message.value)
                asyncio.get_running_loop().call_later(0.05, self.input.on_next, again)

            settler.settle_req = requeued

    def send(self, key: str, t: float, message_id: bytes | None = None) -> Any:
        value = {"k": key, "t": t}
        body = b"%s@%g" % (key.encode(), t)
        message = self.settler.message(body, message_id=message_id).with_value(value)
        self.input.on_next(message)
        return message

    def totals(self) -> dict[tuple[str, W], int]:
        return {(r.key, r.window): r.value for r in self.results}


async def until(
    predicate: Callable[[], Any], timeout: float = 10.0, why: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out {why()}"
        await asyncio.sleep(0.02)


def settler() -> RecordingSettler:
    return RecordingSettler(consumer=FakeConsumer(), msg_timeout=60)


async def test_store_folds_dedupes_routes_late_and_retires(make_store: Callable[[], Any]) -> None:
    store = make_store()
    c = Consumer(store, settler())
    first = c.send("a", 1)
    for key, t in [("a", 5), ("b", 3), ("a", 12)]:
        c.send(key, t)
    c.send("a", 1, message_id=first.id)  # nsqd redelivers: FIN, not folded again
    late = c.send("a", 4)
    c.send("a", 10.5)
    await until(lambda: c.late and c.results)
    assert c.totals() == {("a", W(0, 10)): 2}
    assert [x.message for x in c.late] == [late] and c.late[0].missed == (W(0, 10),)
    assert c.op.stats()["duplicates"] == 1
    assert Command("FIN", first.id) in c.settler.commands and late.outcome is None
    # every id of a retired window is forgotten once the retention passed
    await until(lambda: c.op.stats().get("settled") == 1)
    await asyncio.sleep(0.4)
    size = await store.size("clicks")
    assert (size.windows, size.keys, size.ids) == (2, 2, 3)  # a[10,20), b[0,10); 3 ids
    c.send("a", 100)
    c.send("b", 100)
    await until(lambda: len(c.results) == 3)
    assert c.totals() == {("a", W(0, 10)): 2, ("a", W(10, 20)): 2, ("b", W(0, 10)): 1}
    await asyncio.sleep(0.5)
    size = await store.size("clicks")
    assert (size.windows, size.ids, size.retiring) == (2, 2, 0)  # only the open windows' ids


async def test_a_restarted_consumer_resumes_its_open_windows(
    make_store: Callable[[], Any],
) -> None:
    s = settler()
    first = Consumer(make_store(), s)
    for t in (1, 2, 3):
        first.send("a", t)
    await until(lambda: first.op.stats().get("folded") == 3)
    first.subscription.dispose()  # the process is gone; the store is not
    second = Consumer(make_store(), s)
    second.send("a", 4)
    second.send("a", 3, message_id=s.commands[-1].id)  # redelivery of a stored one
    second.send("a", 20)
    await until(lambda: second.results)
    assert second.totals() == {("a", W(0, 10)): 4}
    assert second.op.stats()["duplicates"] == 1


async def test_two_consumers_of_one_store_give_one_result_per_window(
    make_store: Callable[[], Any],
) -> None:
    s = settler()
    # the two fold in whatever order their transactions run: lateness covers that here
    one = Consumer(make_store(), s, lateness=20, redeliver=True)
    two = Consumer(make_store(), RecordingSettler(consumer=s.consumer), lateness=20, redeliver=True)
    for i in range(40):
        (one if i % 2 else two).send(f"k{i % 3}", i * 0.5)
    consumer = s.consumer
    assert isinstance(consumer, FakeConsumer)
    await until(
        lambda: one.op.stats().get("folded", 0) + two.op.stats().get("folded", 0) == 40,
        why=lambda: f"{one.op.stats()} {two.op.stats()} errors: {consumer.errors}",
    )
    one.send("k0", 100)
    two.send("k1", 100)
    one.send("k2", 100)
    await until(lambda: len(one.results) + len(two.results) >= 6)
    await asyncio.sleep(0.3)
    totals: dict[Any, int] = {}
    for result in one.results + two.results:
        assert (result.key, result.window) not in totals  # each window once
        totals[(result.key, result.window)] = result.value
    expected: dict[Any, int] = {}
    for i in range(40):
        slot = (f"k{i % 3}", W(0, 10) if i * 0.5 < 10 else W(10, 20))
        expected[slot] = expected.get(slot, 0) + 1
    assert totals == expected


async def test_an_unsettled_result_is_handed_out_again(make_store: Callable[[], Any]) -> None:
    s = settler()
    gone = Consumer(make_store(), s, settle=False, lease=0.3)
    gone.send("a", 1)
    gone.send("a", 30)
    await until(lambda: gone.results)
    gone.subscription.dispose()  # died before settling: its claim runs out
    heir = Consumer(make_store(), s, lease=0.3)
    heir.send("b", 1)
    await until(lambda: ("a", W(0, 10)) in heir.totals())
    assert heir.results[0].id == gone.results[0].id  # stable id for idempotent sinks
    heir.subscription.dispose()  # (else the heir may take the next one over too)
    # requeue(): handed out again after the delay
    again = Consumer(make_store(), s, settle=False)
    again.send("c", 1)
    again.send("c", 30)
    await until(lambda: again.results)
    again.results[0].requeue(0.2)
    await until(lambda: len(again.results) == 2)
    assert again.results[1].key == "c" and again.results[1].value == 1


async def test_a_failing_store_requeues_the_batch_and_reports(tmp_path: Path) -> None:
    s = settler()
    c = Consumer(windows.SQLiteStore(tmp_path / "missing" / "state.db"), s)
    m = c.send("a", 1)
    await until(lambda: s.commands)
    assert s.commands[0] == Command("REQ", m.id, None, True)
    consumer = m.consumer
    assert isinstance(consumer, FakeConsumer) and consumer.errors[0][1] == "clicks store"
    c.subscription.dispose()


async def test_sessions_merge_in_the_store(make_store: Callable[[], Any]) -> None:
    clock = windows.event_time(lambda v: v["t"], delay=10)
    c = Consumer(make_store(), settler(), window=windows.session(5), clock=clock)
    for t in (100, 108, 104, 120):  # 104 bridges [100,105) and [108,113) once it comes
        c.send("a", t)
    c.send("a", 200)
    await until(lambda: len(c.results) == 2)
    assert c.totals() == {("a", W(100, 113)): 3, ("a", W(120, 125)): 1}
    size = await c.op.store.size("clicks")
    assert size.windows == 1  # the session of a@200 is still open


async def test_concurrent_first_uses_of_a_postgres_store_share_one_pool(postgres_dsn: str) -> None:
    """Calls starting together on a new store open one pool, and close() closes it: no
    connection is left open (each extra pool would hold one connection that is never closed)."""
    import asyncpg

    database = postgres_dsn.rsplit("/", 1)[1]

    async def connections() -> int:
        probe = await asyncpg.connect(postgres_dsn)
        try:
            count = await probe.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> "
                "pg_backend_pid()",
                database,
            )
        finally:
            await probe.close()
        return int(count)

    store = windows.PostgresStore(postgres_dsn, pool_size=1)  # one connection per pool
    sizes = await asyncio.gather(*(store.size("clicks") for _ in range(4)))
    assert all(size.windows == 0 for size in sizes)
    assert await connections() == 1
    await store.close()
    for _ in range(50):  # the server sees the close a moment later
        if await connections() == 0:
            break
        await asyncio.sleep(0.05)
    assert await connections() == 0
