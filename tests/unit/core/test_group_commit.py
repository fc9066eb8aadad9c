"""Group commit: submissions made together share a commit, every submitter hears how its own went,
and a batch waits (briefly) only for submissions already on their way."""

from __future__ import annotations

import asyncio

from gateway.group_commit import GroupCommit


async def test_concurrent_submissions_share_commits_and_share_a_failure() -> None:
    commits: list[list[int]] = []

    async def commit(items: list[int]) -> None:
        await asyncio.sleep(0)
        commits.append(items)
        if 13 in items:
            raise RuntimeError("commit failed")

    group: GroupCommit[int] = GroupCommit(commit)
    await asyncio.gather(*(group.submit(i) for i in range(10)))
    assert sorted(i for c in commits for i in c) == list(range(10))
    assert len(commits) < 10, "submissions made together are committed together"

    commits.clear()
    results = await asyncio.gather(*(group.submit(i) for i in (11, 12, 13)), return_exceptions=True)
    assert commits == [[11, 12, 13]]
    assert all(isinstance(r, RuntimeError) for r in results), "everyone in a failed commit hears of it"
    assert await group.submit(14) is None, "a failed commit leaves the next one unaffected"


async def test_a_submitter_returns_once_its_own_batch_commits_however_many_follow() -> None:
    """The flushing is not done by a submitter: none is held while others keep submitting."""
    committed: list[int] = []

    async def commit(items: list[int]) -> None:
        await asyncio.sleep(0.001)
        committed.extend(items)

    group: GroupCommit[int] = GroupCommit(commit, max_batch=1)
    first = asyncio.create_task(group.submit(0))
    feeders = [asyncio.create_task(group.submit(i)) for i in range(1, 200)]
    await asyncio.wait_for(first, timeout=1)
    assert 0 in committed and len(committed) < 20, "the first returned long before the queue drained"
    await asyncio.gather(*feeders)
    assert sorted(committed) == list(range(200))


async def test_a_cancelled_submitter_does_not_cancel_the_commit_others_wait_on() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    committed: list[list[int]] = []

    async def commit(items: list[int]) -> None:
        started.set()
        await release.wait()
        committed.append(items)

    group: GroupCommit[int] = GroupCommit(commit)
    first = asyncio.create_task(group.submit(1))
    second = asyncio.create_task(group.submit(2))
    await started.wait()
    first.cancel()
    release.set()
    await second
    assert committed == [[1, 2]]


class Coming:
    """A count of submissions on their way, as ``Disclosure.underway`` keeps it."""

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def __call__(self) -> int:
        return self.n


async def test_a_batch_waits_for_the_submissions_on_their_way() -> None:
    commits: list[list[int]] = []

    async def commit(items: list[int]) -> None:
        commits.append(items)

    coming = Coming(3)
    group: GroupCommit[int] = GroupCommit(commit, linger=30, coming=coming)

    async def arrive(i: int, after: int) -> None:
        for _ in range(after):
            await asyncio.sleep(0)  # later than the batch is formed
        coming.n -= 1
        await group.submit(i)

    await asyncio.wait_for(asyncio.gather(arrive(1, 0), arrive(2, 5), arrive(3, 10)), timeout=10)
    assert commits == [[1, 2, 3]], "one commit for all three; the last arrival released it, not the linger"


async def test_with_nothing_on_its_way_a_batch_does_not_wait() -> None:
    commits: list[list[int]] = []

    async def commit(items: list[int]) -> None:
        commits.append(items)

    group: GroupCommit[int] = GroupCommit(commit, linger=30, coming=Coming(0))
    await asyncio.wait_for(group.submit(1), timeout=5)
    assert commits == [[1]]


async def test_a_full_batch_does_not_wait_for_more() -> None:
    commits: list[list[int]] = []

    async def commit(items: list[int]) -> None:
        commits.append(items)

    group: GroupCommit[int] = GroupCommit(commit, max_batch=2, linger=30, coming=Coming(5))

    async def later(i: int) -> None:
        for _ in range(5):
            await asyncio.sleep(0)  # the batch is waiting by now
        await group.submit(i)

    await asyncio.wait_for(asyncio.gather(group.submit(1), later(2)), timeout=5)
    assert commits == [[1, 2]], "the second filled the batch, which went at once"


async def test_a_batch_waits_no_longer_than_its_linger() -> None:
    """A submission that never comes (its request failed before the log, say) holds a batch only
    for the linger."""
    commits: list[list[int]] = []

    async def commit(items: list[int]) -> None:
        commits.append(items)

    group: GroupCommit[int] = GroupCommit(commit, linger=0.05, coming=Coming(1))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(group.submit(1), timeout=5)
    assert commits == [[1]]
    assert loop.time() - started >= 0.04, "it waited for the one said to be coming"
