"""The processes a fleet row keeps: merged the same in any order, bounded whatever is read."""

from __future__ import annotations

import random

from gateway.fleet.processes import MAX_PROCESSES, Process, clash, cleaned, heard, union


def _random_list(rng: random.Random, size: int) -> list[Process]:
    entries = {}
    for _ in range(size):
        key = (rng.choice("ab"), rng.choice(["", "s1", "s2"]), str(rng.randrange(3)))
        first = float(rng.randrange(100))
        entries[key] = (*key, first, first + rng.randrange(50))
    return union(entries.values())


def test_union_is_the_same_in_any_order() -> None:
    rng = random.Random(7)
    for _ in range(500):
        a, b, c = (_random_list(rng, rng.randrange(6)) for _ in range(3))
        assert union(a, b) == union(b, a)
        assert len(union(a, b, c)) <= MAX_PROCESSES
        if len({p[:3] for p in (*a, *b, *c)}) <= MAX_PROCESSES:
            # Past the bound, a process dropped and heard again counts from then on.
            assert union(union(a, b), c) == union(a, union(b, c)) == union(a, b, c)


def test_a_process_heard_again_keeps_one_entry_per_series() -> None:
    starts = (("0000abcd", 1_700_000_000_123_456_789), ("0000beef", 1_700_000_000_223_456_789))
    processes: list[Process] = []
    for now in (10.0, 20.0, 30.0):
        processes, _ = heard(processes, "node-1", starts, now)
    assert processes == [
        ("node-1", "0000abcd", "1700000000123456789", 10.0, 30.0),
        ("node-1", "0000beef", "1700000000223456789", 10.0, 30.0),
    ]
    assert clash(processes, 120.0) == (0.0, [])


def test_whatever_is_read_back_is_cut_to_the_bounds() -> None:
    hostile = [
        [f"{i:05d}" + "h" * 10_000, "s" * 1000, "9" * 1000, 1.0, float(i)] for i in range(10_000)
    ]
    processes = cleaned([*hostile, ["x"], "y", [1, 2, 3, 4, 5], {"a": 1}])
    assert len(processes) == MAX_PROCESSES
    assert {(len(p[0]), len(p[1]), len(p[2])) for p in processes} == {(128, 8, 24)}
    assert cleaned({}) == cleaned(None) == []
