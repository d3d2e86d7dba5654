"""``DiffStoreContract``: what diff sync relies on from a ledger's ``DiffStore``.

Subclass it and provide a ``ledger`` fixture yielding an opened ledger implementing
``sender.ports.DiffStore`` (the same fixture ``LedgerContract`` uses)."""

from __future__ import annotations

from typing import Any

from ..ports import DiffStore, PlanRow

__all__ = ["DiffStoreContract"]


def _sends(keys: list[bytes], first_seq: int = 0) -> list[PlanRow]:
    return [
        PlanRow("send", ordinal, first_seq + ordinal, key, bytes([ordinal % 256]) * 16)
        for ordinal, key in enumerate(keys)
    ]


async def _baseline(ledger: Any, dataset: str = "churn", route: str = "r") -> dict[bytes, bytes]:
    return dict(await ledger.baseline_page(dataset, route, None, 10_000))


class DiffStoreContract:
    """Needs a ``ledger`` fixture (an opened ledger with the ``DiffStore`` ability)."""

    async def test_ledger_implements_the_diff_store(self, ledger: Any) -> None:
        assert isinstance(ledger, DiffStore)

    async def test_a_new_route_has_an_empty_baseline_and_no_plan(self, ledger: Any) -> None:
        assert await ledger.baseline_page("churn", "r", None, 10) == []
        assert not await ledger.has_plan("b-1", "r")

    async def test_a_plan_counts_only_once_finished(self, ledger: Any) -> None:
        await ledger.start_plan("b-1", "r")
        await ledger.save_plan("b-1", "r", _sends([b"1", b"2"]))
        assert not await ledger.has_plan("b-1", "r")  # a crash here leaves no usable plan
        await ledger.finish_plan("b-1", "r")
        assert await ledger.has_plan("b-1", "r")
        assert not await ledger.has_plan("b-1", "other")

    async def test_starting_a_plan_again_forgets_the_unfinished_one(self, ledger: Any) -> None:
        await ledger.start_plan("b-1", "r")
        await ledger.save_plan("b-1", "r", _sends([b"1", b"2", b"3"]))
        await ledger.start_plan("b-1", "r")
        await ledger.save_plan("b-1", "r", _sends([b"9"]))
        await ledger.finish_plan("b-1", "r")
        rows = await ledger.plan_page("b-1", "r", -1, 100)
        assert [row.key for row in rows] == [b"9"]

    async def test_plan_rows_round_trip_in_ordinal_order_a_page_at_a_time(
        self, ledger: Any
    ) -> None:
        rows = [
            PlanRow("send", 0, 0, b'"a"', b"\x00" * 16),
            PlanRow("duplicate", 1, reason="duplicate key"),
            PlanRow("bad", 2, reason="no diff key id"),
            PlanRow("send", 5, 1, b'"\xc3\xa9\\u0000"', b"\xff" * 16),
            PlanRow("delete", None, 2, b'"gone"'),
            PlanRow("delete", None, 3, b'"gone too"'),
        ]
        await ledger.start_plan("b-1", "r")
        await ledger.save_plan("b-1", "r", rows[:2])
        await ledger.save_plan("b-1", "r", rows[2:])
        await ledger.finish_plan("b-1", "r")
        first = await ledger.plan_page("b-1", "r", -1, 2)
        rest = await ledger.plan_page("b-1", "r", first[-1].ordinal, 10)
        assert first + rest == rows[:4]
        assert await ledger.tombstone_page("b-1", "r", -1, 10) == rows[4:]
        assert await ledger.tombstone_page("b-1", "r", 2, 10) == rows[5:]

    async def test_commit_moves_only_the_delivered_ranges_into_the_baseline(
        self, ledger: Any
    ) -> None:
        await ledger.start_plan("b-1", "r")
        await ledger.save_plan("b-1", "r", _sends([b"k0", b"k1", b"k2", b"k3", b"k4"]))
        await ledger.finish_plan("b-1", "r")
        moved = await ledger.commit_baseline("churn", "r", "b-1", [(0, 2), (4, 5)])
        assert moved == 3
        assert sorted(await _baseline(ledger)) == [b"k0", b"k1", b"k4"]
        # a replay that delivers the rest later moves it too; committing again changes nothing
        await ledger.commit_baseline("churn", "r", "b-1", [(2, 4)])
        await ledger.commit_baseline("churn", "r", "b-1", [(0, 5)])
        assert sorted(await _baseline(ledger)) == [b"k0", b"k1", b"k2", b"k3", b"k4"]

    async def test_a_later_batch_updates_hashes_and_its_tombstones_remove_keys(
        self, ledger: Any
    ) -> None:
        await ledger.start_plan("b-1", "r")
        await ledger.save_plan("b-1", "r", _sends([b"a", b"b", b"c"]))
        await ledger.finish_plan("b-1", "r")
        await ledger.commit_baseline("churn", "r", "b-1", [(0, 3)])
        await ledger.start_plan("b-2", "r")
        await ledger.save_plan(
            "b-2",
            "r",
            [PlanRow("send", 7, 0, b"a", b"\x07" * 16), PlanRow("delete", None, 1, b"c")],
        )
        await ledger.finish_plan("b-2", "r")
        await ledger.commit_baseline("churn", "r", "b-2", [(0, 2)])
        assert await _baseline(ledger) == {b"a": b"\x07" * 16, b"b": b"\x01" * 16}

    async def test_a_full_refresh_replaces_the_baseline(self, ledger: Any) -> None:
        await ledger.start_plan("b-1", "r")
        await ledger.save_plan("b-1", "r", _sends([b"a", b"b"]))
        await ledger.finish_plan("b-1", "r")
        await ledger.commit_baseline("churn", "r", "b-1", [(0, 2)])
        await ledger.start_plan("b-2", "r")
        await ledger.save_plan("b-2", "r", _sends([b"z"]))
        await ledger.finish_plan("b-2", "r")
        await ledger.commit_baseline("churn", "r", "b-2", [(0, 1)], replace=True)
        assert sorted(await _baseline(ledger)) == [b"z"]

    async def test_baselines_are_kept_per_dataset_and_route(self, ledger: Any) -> None:
        await ledger.start_plan("b-1", "r")
        await ledger.save_plan("b-1", "r", _sends([b"a"]))
        await ledger.finish_plan("b-1", "r")
        await ledger.commit_baseline("churn", "r", "b-1", [(0, 1)])
        assert await _baseline(ledger, "churn", "other") == {}
        assert await _baseline(ledger, "fraud", "r") == {}

    async def test_baseline_pages_come_in_bytewise_key_order(self, ledger: Any) -> None:
        keys = [b'"\xc3\xa9"', b"10", b"9", b'"a"', b'"A"', b"[1,2]", b'"\x7f"']
        await ledger.start_plan("b-1", "r")
        await ledger.save_plan("b-1", "r", _sends(keys))
        await ledger.finish_plan("b-1", "r")
        await ledger.commit_baseline("churn", "r", "b-1", [(0, len(keys))])
        pages, after = [], None
        while page := await ledger.baseline_page("churn", "r", after, 3):
            pages.append(page)
            after = page[-1][0]
        assert [len(p) for p in pages] == [3, 3, 1]
        assert [key for page in pages for key, _ in page] == sorted(keys)
