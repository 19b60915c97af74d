"""The change feed: a watch opened before a read misses no change published after it."""

from __future__ import annotations

import asyncio

from jobyard.store.feed import JobFeed


async def test_a_watch_sees_its_jobs_changes_and_only_theirs() -> None:
    feed = JobFeed(recheck_seconds=5)
    with feed.watch(1) as one, feed.watch() as every:
        feed.publish([2])
        assert not await one.wait(0.01)
        assert await every.wait(0.01)
        feed.publish([1, 2])  # published before the wait: kept until the reader takes it
        assert await one.wait(0.01) and await every.wait(0)
        assert not await one.wait(0)  # taken
        assert feed.watching() == 2
    assert feed.watching() == 0
    feed.publish([1])  # nobody watching: nothing to do


async def test_a_wait_ends_at_the_recheck_or_when_told() -> None:
    feed = JobFeed(recheck_seconds=0.05)
    with feed.watch(7) as seven:
        assert seven.recheck_seconds == 0.05
        assert not await seven.wait()  # the recheck: another server's changes are not told
        waiter = asyncio.ensure_future(seven.wait(10))
        await asyncio.sleep(0)
        feed.publish([7])
        assert await asyncio.wait_for(waiter, 1)
