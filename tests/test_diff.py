"""Diff sync's planning and filtering, against an in-memory baseline store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from sender.diff import (
    DiffFilter,
    DiffPlanner,
    DiffSpec,
    RecordDigest,
    baseline_pages,
    tombstone,
)
from sender.ports import PlanRow


class BaselineStore:
    """The DiffStore port in memory: a baseline and plans per (batch, route)."""

    def __init__(self) -> None:
        self.baseline: dict[tuple[str, str], dict[bytes, bytes]] = {}
        self.plans: dict[tuple[str, str], list[PlanRow]] = {}
        self.finished: set[tuple[str, str]] = set()

    async def baseline_page(
        self, dataset: str, route: str, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        items = sorted(self.baseline.get((dataset, route), {}).items())
        return [item for item in items if after is None or item[0] > after][:limit]

    async def start_plan(self, batch_id: str, route: str) -> None:
        self.plans[(batch_id, route)] = []
        self.finished.discard((batch_id, route))

    async def save_plan(self, batch_id: str, route: str, rows: Sequence[PlanRow]) -> None:
        self.plans[(batch_id, route)].extend(rows)

    async def finish_plan(self, batch_id: str, route: str) -> None:
        self.finished.add((batch_id, route))

    async def has_plan(self, batch_id: str, route: str) -> bool:
        return (batch_id, route) in self.finished

    async def plan_page(
        self, batch_id: str, route: str, after_ordinal: int, limit: int
    ) -> list[PlanRow]:
        rows = [r for r in self.plans[(batch_id, route)] if r.kind != "delete"]
        return [r for r in rows if r.ordinal is not None and r.ordinal > after_ordinal][:limit]

    async def tombstone_page(
        self, batch_id: str, route: str, after_seq: int, limit: int
    ) -> list[PlanRow]:
        rows = [r for r in self.plans[(batch_id, route)] if r.kind == "delete"]
        return [r for r in rows if r.seq is not None and r.seq > after_seq][:limit]

    async def commit_baseline(
        self,
        dataset: str,
        route: str,
        batch_id: str,
        delivered: Sequence[tuple[int, int]],
        *,
        replace: bool = False,
    ) -> int:
        baseline = self.baseline.setdefault((dataset, route), {})
        if replace:
            baseline.clear()
        moved = 0
        for row in self.plans[(batch_id, route)]:
            if row.seq is None or not any(a <= row.seq < b for a, b in delivered):
                continue
            assert row.key is not None
            if row.kind == "send":
                assert row.hash is not None
                baseline[row.key] = row.hash
            elif row.kind == "delete":
                baseline.pop(row.key, None)
            moved += 1
        return moved


def lines(records: Sequence[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(record) for record in records]


async def run_batch(
    store: BaselineStore,
    batch_id: str,
    records: list[bytes],
    spec: DiffSpec,
    *,
    full: bool = False,
    block: int = 3,
) -> tuple[list[bytes], list[bytes], int, list[Any], Any]:
    """Plan then filter a batch as the engine does; returns what is sent, the tombstones,
    the unchanged count, the rejected records and the plan's stats."""
    with DiffPlanner(spec) as planner:
        for i in range(0, len(records), block):
            planner.add(records[i : i + block])
        baseline = None if full else baseline_pages(store, "churn", "r")

        async def save(rows: Sequence[PlanRow]) -> None:
            await store.save_plan(batch_id, "r", rows)

        await store.start_plan(batch_id, "r")
        stats = await planner.plan(baseline, save)
        await store.finish_plan(batch_id, "r")
    assert await store.has_plan(batch_id, "r")
    sent, bad, unchanged = [], [], 0
    diff_filter = DiffFilter(lambda after, limit: store.plan_page(batch_id, "r", after, limit))
    for i in range(0, len(records), block):
        await diff_filter.prefetch(block)
        out, same, rejected = diff_filter.apply(records[i : i + block], lambda k: f"f:{k}")
        sent += out
        unchanged += same
        bad += rejected
    gone = [
        tombstone(spec, row.key or b"")
        for row in await store.tombstone_page(batch_id, "r", -1, 1000)
    ]
    return sent, gone, unchanged, bad, stats


async def deliver_all(store: BaselineStore, batch_id: str, *, full: bool = False) -> None:
    total = len(store.plans.get((batch_id, "r"), []))
    await store.commit_baseline("churn", "r", batch_id, [(0, total)], replace=full)


SPEC = DiffSpec(key=("id",))
DAY1 = [{"id": i, "score": i / 10} for i in range(10)]


async def test_a_first_batch_sends_everything_and_fills_the_baseline() -> None:
    store = BaselineStore()
    sent, gone, unchanged, bad, stats = await run_batch(store, "d1", lines(DAY1), SPEC)
    assert sent == lines(DAY1)
    assert (gone, unchanged, bad) == ([], 0, [])
    await deliver_all(store, "d1")
    assert len(store.baseline[("churn", "r")]) == 10
    assert (stats.read, stats.send, stats.unchanged) == (10, 10, 0)


async def test_the_next_batch_sends_only_changed_and_new_records() -> None:
    store = BaselineStore()
    await run_batch(store, "d1", lines(DAY1), SPEC)
    await deliver_all(store, "d1")
    day2 = [dict(r) for r in DAY1]
    day2[3]["score"] = 0.99
    day2.append({"id": 42, "score": 0.5})
    sent, gone, unchanged, bad, stats = await run_batch(store, "d2", lines(day2), SPEC)
    assert [json.loads(s)["id"] for s in sent] == [3, 42]
    assert (unchanged, bad, gone) == (9, [], [])
    assert stats.read == stats.send + stats.unchanged + stats.rejected


async def test_an_ignored_field_does_not_count_as_a_change() -> None:
    spec = DiffSpec(key=("id",), ignore=frozenset({"scored_at"}))
    store = BaselineStore()
    day1 = [
        {"id": 1, "score": 0.5, "scored_at": "mon"},
        {"id": 2, "score": 0.7, "scored_at": "mon"},
    ]
    await run_batch(store, "d1", lines(day1), spec)
    await deliver_all(store, "d1")
    day2 = [
        {"id": 1, "score": 0.5, "scored_at": "tue"},
        {"id": 2, "score": 0.8, "scored_at": "tue"},
    ]
    sent, _, unchanged, _, _ = await run_batch(store, "d2", lines(day2), spec)
    assert [json.loads(s)["id"] for s in sent] == [2]
    assert unchanged == 1


async def test_values_are_compared_as_written_so_a_big_integer_change_is_seen() -> None:
    store = BaselineStore()
    day1 = [b'{"id": 1, "n": 123456789012345678901234567890}']
    await run_batch(store, "d1", day1, SPEC)
    await deliver_all(store, "d1")
    sent, *_ = await run_batch(
        store, "d2", [b'{"id": 1, "n": 123456789012345678901234567891}'], SPEC
    )
    assert len(sent) == 1


async def test_gone_keys_become_tombstones_after_the_records_when_deletes_is_on() -> None:
    spec = DiffSpec(key=("id",), deletes=True)
    store = BaselineStore()
    await run_batch(store, "d1", lines(DAY1), spec)
    await deliver_all(store, "d1")
    day2 = [r for r in DAY1 if r["id"] not in (2, 7)]
    sent, gone, unchanged, _, stats = await run_batch(store, "d2", lines(day2), spec)
    assert sent == []
    assert [json.loads(g) for g in gone] == [
        {"id": 2, "_deleted": True},
        {"id": 7, "_deleted": True},
    ]
    assert (unchanged, stats.tombstones) == (8, 2)
    await deliver_all(store, "d2")
    assert sorted(store.baseline[("churn", "r")]) == sorted(str(r["id"]).encode() for r in day2)


async def test_without_deletes_gone_keys_send_nothing() -> None:
    store = BaselineStore()
    await run_batch(store, "d1", lines(DAY1), SPEC)
    await deliver_all(store, "d1")
    sent, gone, unchanged, _, _ = await run_batch(store, "d2", lines(DAY1[:5]), SPEC)
    assert (sent, gone, unchanged) == ([], [], 5)


async def test_a_duplicate_key_keeps_the_later_record_and_rejects_the_earlier() -> None:
    store = BaselineStore()
    records = lines([{"id": 1, "v": "first"}, {"id": 2, "v": "x"}, {"id": 1, "v": "second"}])
    sent, _, _, bad, stats = await run_batch(store, "d1", records, SPEC)
    assert [json.loads(s) for s in sent] == [{"id": 2, "v": "x"}, {"id": 1, "v": "second"}]
    assert [(b.reason, json.loads(b.raw)["v"], b.location) for b in bad] == [
        ("duplicate key", "first", "f:0")
    ]
    assert stats.rejected == 1


async def test_a_record_without_its_key_is_a_bad_record_with_its_location() -> None:
    store = BaselineStore()
    records = lines([{"id": 1}, {"other": 2}, {"id": None}, {"id": 3}])
    sent, _, _, bad, _ = await run_batch(store, "d1", records, SPEC, block=2)
    assert [json.loads(s)["id"] for s in sent] == [1, 3]
    assert [(b.reason, b.location) for b in bad] == [
        ("no diff key id", "f:1"),
        ("no diff key id", "f:0"),
    ]


async def test_compound_keys_and_their_tombstones() -> None:
    spec = DiffSpec(key=("region", "id"), deletes=True)
    store = BaselineStore()
    day1 = [{"region": "eu", "id": 1, "s": 1}, {"region": "us", "id": 1, "s": 2}]
    await run_batch(store, "d1", lines(day1), spec)
    await deliver_all(store, "d1")
    sent, gone, _, _, _ = await run_batch(store, "d2", lines(day1[:1]), spec)
    assert sent == []
    assert [json.loads(g) for g in gone] == [{"region": "us", "id": 1, "_deleted": True}]


async def test_a_full_refresh_sends_everything_and_replaces_the_baseline() -> None:
    spec = DiffSpec(key=("id",), deletes=True)
    store = BaselineStore()
    await run_batch(store, "d1", lines(DAY1), spec)
    await deliver_all(store, "d1")
    sent, gone, unchanged, _, _ = await run_batch(store, "d2", lines(DAY1[:4]), spec, full=True)
    assert (len(sent), gone, unchanged) == (4, [], 0)
    await deliver_all(store, "d2", full=True)
    assert len(store.baseline[("churn", "r")]) == 4


async def test_undelivered_records_stay_out_of_the_baseline_and_are_sent_again() -> None:
    store = BaselineStore()
    await run_batch(store, "d1", lines(DAY1), SPEC)
    # seqs 3..5 were dead-lettered: only the rest is delivered
    await store.commit_baseline("churn", "r", "d1", [(0, 3), (6, 10)])
    sent, *_ = await run_batch(store, "d2", lines(DAY1), SPEC)
    assert [json.loads(s)["id"] for s in sent] == [3, 4, 5]


async def test_filtering_again_with_the_frozen_plan_gives_the_same_records() -> None:
    store = BaselineStore()
    await run_batch(store, "d1", lines(DAY1), SPEC)
    await deliver_all(store, "d1")
    day2 = [dict(r, score=0.0) if r["id"] % 3 == 0 else r for r in DAY1]
    first, *_ = await run_batch(store, "d2", lines(day2), SPEC)
    await deliver_all(store, "d2")  # the baseline moved on: a resume must not look at it
    diff_filter = DiffFilter(lambda after, limit: store.plan_page("d2", "r", after, limit))
    await diff_filter.prefetch(len(day2))
    again, unchanged, _ = diff_filter.apply(lines(day2))
    assert again == first
    assert unchanged == len(day2) - len(first)


def test_the_digest_of_a_line_that_is_not_an_object_says_so() -> None:
    assert isinstance(RecordDigest(SPEC).digest(b"[1]"), str)


@pytest.mark.parametrize("count", [0, 1, 12_001])
async def test_plans_of_any_size_page_through_the_store(count: int) -> None:
    store = BaselineStore()
    records = [b'{"id": %d}' % i for i in range(count)]
    sent, *_ = await run_batch(store, "d1", records, SPEC, block=1000)
    assert len(sent) == count
    await deliver_all(store, "d1")
    sent, _, unchanged, _, _ = await run_batch(store, "d2", records, SPEC, block=1000)
    assert (sent, unchanged) == ([], count)
