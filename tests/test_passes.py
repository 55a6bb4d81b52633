"""A run's passes (pipeline/passes.py), with stand-ins for Ray Data and the writers: a node
lost mid-run ends a stalled pass and starts another over the nodes left, with the images no
writer holds; a stall with no node lost is an error in one line. (The same on a real
two-node Ray: tests/test_pools_ray.py.)"""

from __future__ import annotations

import pytest
from ray.data.exceptions import ExecutionTimeoutError

from masktok.pipeline import passes
from masktok.schemas.errors import RunError

SHARD = 3
ITEMS = [{"index": i, "image_id": str(i), "path": f"{i}.jpg"} for i in range(9)]


class Writers:
    """The writers' side as the driver sees it: images held until their shard is complete,
    then a commit in the next report."""

    def __init__(self):
        self.held: set[int] = set()
        self.complete: set[int] = set()
        self.pending: list[dict] = []

    def deliver(self, items: list[dict]) -> None:
        for item in items:
            self.held.add(item["index"])
            shard = item["index"] // SHARD
            mine = set(range(shard * SHARD, shard * SHARD + SHARD))
            if mine <= self.held:
                self.held -= mine
                self.complete.add(shard)
                commit = {"shard": shard, "images_failed": 0, "failures": [], "rows": [shard * SHARD, shard * SHARD + SHARD]}
                self.pending.append({"new_images": 0, "results": [{"commit": commit}]})
        self.pending.append({"new_images": len(items), "results": []})

    def reports(self, timeout: float) -> list[dict]:
        out, self.pending = self.pending, []
        return out

    def finish(self) -> list[dict]:
        return self.reports(0)

    def holding(self) -> tuple[set[int], set[int]]:
        return set(self.held), set(self.complete)


class Stream:
    """A pass's dataset: hands ``items[:upto]`` to the writers, then ends or fails."""

    def __init__(self, writers: Writers, items: list[dict], upto: int, error: Exception | None):
        self.writers, self.items, self.upto, self.error = writers, items, upto, error

    def iter_batches(self, batch_size=None):
        self.writers.deliver(self.items[:self.upto])
        if self.error:
            raise self.error
        yield from ()


class Pools:
    def __init__(self, line: str):
        self._line = line

    def line(self) -> str:
        return self._line


def run_passes(monkeypatch, node_sets: list[set[str]], streams: list[tuple[int, Exception | None]]):
    """stream_passes over ITEMS with ``streams[n]`` as pass n's stream and ``node_sets`` the
    alive nodes at each look; returns (books, the items of each pass, the Ray Data settings
    of each pass, the lines)."""
    import ray.data

    context = ray.data.DataContext.get_current()  # the process's: restored for the tests after this one
    for name in ("execution_no_progress_timeout_s", "wait_for_min_actors_s"):
        monkeypatch.setattr(context, name, getattr(context, name))
    looks = iter(node_sets)
    monkeypatch.setattr(passes, "alive_nodes", lambda: next(looks))
    monkeypatch.setattr(passes, "_wait_released", lambda pools: None)
    writers, made, settings, lines = Writers(), [], [], []

    def make_dataset(left, pools):
        context = ray.data.DataContext.get_current()
        settings.append((context.execution_no_progress_timeout_s, context.wait_for_min_actors_s, pools.line()))
        made.append([it["index"] for it in left])
        upto, error = streams[len(made) - 1]
        return Stream(writers, left, upto, error)

    books = passes.stream_passes(ITEMS, [0, 1, 2], SHARD, Pools("two nodes"), make_dataset,
                                 lambda: Pools("one node"), writers, lambda books: None, lines.append,
                                 stall_timeout=5)
    return books, made, settings, lines


def test_a_node_lost_mid_run_starts_a_pass_over_the_nodes_left_with_the_images_no_writer_holds(monkeypatch):
    stalled = ExecutionTimeoutError("Dataset execution made no progress")
    # pass 1: shard 0 committed, images 3 and 4 held, then the stream stalls (a node was lost)
    books, made, settings, lines = run_passes(monkeypatch, [{"a", "b"}, {"a"}, {"a"}],
                                              [(5, stalled), (4, None)])
    assert made == [list(range(9)), [5, 6, 7, 8]]
    assert settings == [(5, -1, "two nodes"), (5, 5, "one node")]  # a new pass waits for its pools to start
    assert lines == ["1 node left the cluster during pass 1: pass 2 streams the 4 images no writer holds, over "
                     "the nodes left; one node"]
    assert sorted(c["shard"] for c in books.committed) == [0, 1, 2] and books.uncommitted() == []
    assert books.images == 9


def test_a_stall_with_no_node_lost_stops_the_run_in_one_line(monkeypatch):
    with pytest.raises(RunError) as info:
        run_passes(monkeypatch, [{"a"}, {"a"}], [(2, ExecutionTimeoutError("no progress"))])
    assert str(info.value).startswith("no image moved through any stage for 5 s and no node was lost: ")
    assert "\n" not in str(info.value)


def test_a_new_pass_whose_pools_never_start_stops_the_run_in_one_line(monkeypatch):
    from ray.exceptions import GetTimeoutError

    stalled = ExecutionTimeoutError("Dataset execution made no progress")
    with pytest.raises(RunError, match="^no image moved through any stage for 5 s and no node was lost: "):
        run_passes(monkeypatch, [{"a", "b"}, {"a"}, {"a"}, {"a"}],
                   [(5, stalled), (0, GetTimeoutError("Timed out while starting actors."))])


def test_a_failed_stream_with_no_node_lost_is_raised_as_it_is(monkeypatch):
    with pytest.raises(ValueError, match="a stage's own error"):
        run_passes(monkeypatch, [{"a"}, {"a"}], [(2, ValueError("a stage's own error"))])


def test_a_pass_that_stalled_after_the_writers_got_every_image_ends_without_another_stream(monkeypatch):
    books, made, _, lines = run_passes(monkeypatch, [{"a", "b"}, {"a"}, {"a"}],
                                       [(9, ExecutionTimeoutError("no progress"))])
    assert made == [list(range(9))] and len(lines) == 1 and "streams the 0 images" in lines[0]
    assert sorted(c["shard"] for c in books.committed) == [0, 1, 2]
