"""PoolCore's bookkeeping (docs/hbone.md, Connection pool) as tables: a script of calls
with the clock given, and what each answers. Pure and fast: no sockets, no loop."""
import pytest

from meshcore._core.pool import OpenFailure, PoolCore, Step

USE, DIAL, WAIT_DIAL, WAIT_ROOM, REFUSED = Step.USE, Step.DIAL, Step.WAIT_DIAL, Step.WAIT_ROOM, Step.REFUSED
K, OTHER = "key", "other key"


def play(core: PoolCore, script):
    """Each row: (method, *args); acquire rows name the answer expected, the others
    check their return value when one is given as the row's last item after '->'."""
    for row in script:
        name, *args = row
        expected = None
        if "->" in args:
            i = args.index("->")
            args, expected = args[:i], args[i + 1]
        got = getattr(core, name)(*args)
        if expected is not None:
            assert got == expected, f"{row}: got {got!r}"


# (title, core options, script)
TABLE = [
    ("the first caller dials, the others wait for that dial", {}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("acquire", K, 0.0, "->", (WAIT_DIAL, None)),
        ("acquire", OTHER, 0.0, "->", (DIAL, None)),          # keys never share
        ("add", K, 1, 100, 0.0),
        ("acquire", K, 0.0, "->", (USE, 1)),
    ]),
    ("a failed or abandoned dial lets the next caller dial", {}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("end_dial", K),
        ("acquire", K, 0.0, "->", (DIAL, None)),
    ]),
    ("streams fill the fullest connection with room, the oldest on ties", {"max_streams": 2}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("add", K, 1, 100, 0.0),
        ("acquire", K, 0.0, "->", (USE, 1)),
        ("acquire", K, 0.0, "->", (USE, 1)),
        ("acquire", K, 0.0, "->", (DIAL, None)),               # 1 is full (max_streams 2)
        ("add", K, 2, 100, 0.0),
        ("acquire", K, 0.0, "->", (USE, 2)),
        ("release", 1, 0.0, "->", False),
        ("acquire", K, 0.0, "->", (USE, 1)),                   # 1 and 2 hold one each: the older
    ]),
    ("the peer's limit is the room", {}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("add", K, 1, 1, 0.0),
        ("acquire", K, 0.0, "->", (USE, 1)),
        ("acquire", K, 0.0, "->", (DIAL, None)),
    ]),
    ("at max_connections full connections callers wait for room, a dial in progress counts",
     {"max_streams": 1, "max_connections": 2}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("add", K, 1, 100, 0.0),
        ("acquire", K, 0.0, "->", (USE, 1)),
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("acquire", K, 0.0, "->", (WAIT_DIAL, None)),
        ("add", K, 2, 100, 0.0),
        ("acquire", K, 0.0, "->", (USE, 2)),
        ("acquire", K, 0.0, "->", (WAIT_ROOM, None)),
        ("acquire", OTHER, 0.0, "->", (DIAL, None)),           # per key
        ("release", 2, 1.0, "->", False),
        ("acquire", K, 1.0, "->", (USE, 2)),
    ]),
    ("a retired connection leaves room under the cap and closes with its last stream",
     {"max_streams": 1, "max_connections": 1}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("add", K, 1, 100, 0.0),
        ("acquire", K, 0.0, "->", (USE, 1)),
        ("acquire", K, 0.0, "->", (WAIT_ROOM, None)),
        ("retire", 1, "->", False),                            # a stream still open on it
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("release", 1, 0.0, "->", True),                       # now close it
    ]),
    ("a peer allowing 0 streams is refused without a dial until the hold ends",
     {"refusal_hold": 2.0}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("add", K, 1, 0, 0.0),
        ("acquire", K, 0.5, "->", (REFUSED, None)),
        ("acquire", K, 1.9, "->", (REFUSED, None)),
        ("idle", 1.9, "->", []),
        ("acquire", K, 2.0, "->", (DIAL, None)),               # asked again, once
        ("acquire", K, 2.0, "->", (WAIT_DIAL, None)),
        ("idle", 2.0, "->", [1]),                              # the refusing one is closed
    ]),
    ("a limit that rises above 0 ends the refusal at once", {"refusal_hold": 2.0}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("add", K, 1, 0, 0.0),
        ("acquire", K, 0.1, "->", (REFUSED, None)),
        ("set_limit", 1, 5, 0.2),
        ("acquire", K, 0.3, "->", (USE, 1)),
    ]),
    ("a limit that drops to 0 starts a refusal; open streams stay", {"refusal_hold": 2.0}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("add", K, 1, 10, 0.0),
        ("acquire", K, 0.0, "->", (USE, 1)),
        ("set_limit", 1, 0, 1.0),
        ("acquire", K, 1.5, "->", (REFUSED, None)),
        ("idle", 4.0, "->", []),                               # a stream is still open
        ("release", 1, 4.0, "->", False),
        ("idle", 4.0, "->", [1]),
    ]),
    ("REFUSED_STREAM holds the connection for the hold, then it is used again", {"refusal_hold": 2.0}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("add", K, 1, 100, 0.0),
        ("refused", 1, 1.0),
        ("acquire", K, 1.0, "->", (REFUSED, None)),
        ("acquire", K, 3.0, "->", (USE, 1)),
        ("idle", 3.0, "->", []),
    ]),
    ("a refusing connection does not block another with room", {"refusal_hold": 2.0}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("add", K, 1, 100, 0.0),
        ("acquire", K, 0.0, "->", (USE, 1)),
        ("acquire", K, 0.0, "->", (USE, 1)),
        ("refused", 1, 0.5),
        ("acquire", K, 0.5, "->", (REFUSED, None)),
        ("add", K, 2, 100, 0.5),                               # e.g. a dial that was under way
        ("acquire", K, 0.6, "->", (USE, 2)),
    ]),
    ("a dial already under way is waited for even while the peer refuses", {"max_streams": 1}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("add", K, 1, 100, 0.0),
        ("acquire", K, 0.0, "->", (USE, 1)),
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("refused", 1, 0.0),
        ("acquire", K, 0.0, "->", (WAIT_DIAL, None)),
        ("end_dial", K),
        ("acquire", K, 0.0, "->", (REFUSED, None)),
    ]),
    ("idle: unused for idle_timeout, never with a stream open", {"idle_timeout": 10.0}, [
        ("acquire", K, 0.0, "->", (DIAL, None)),
        ("add", K, 1, 100, 0.0),
        ("acquire", K, 5.0, "->", (USE, 1)),
        ("idle", 20.0, "->", []),
        ("release", 1, 20.0, "->", False),
        ("idle", 14.9, "->", []),
        ("idle", 15.0, "->", [1]),
        ("acquire", K, 15.0, "->", (DIAL, None)),              # retired: a new one
        ("remove", 1),
        ("idle", 100.0, "->", []),
    ]),
    ("release and retire of unknown connections are no-ops", {}, [
        ("release", 9, 0.0, "->", False),
        ("retire", 9, "->", False),
        ("refused", 9, 0.0),
        ("set_limit", 9, 0, 0.0),
        ("remove", 9),
        ("acquire", K, 0.0, "->", (DIAL, None)),
    ]),
]


@pytest.mark.parametrize("title,options,script", TABLE, ids=[t[0] for t in TABLE])
def test_pool_core(title, options, script):
    play(PoolCore(**options), script)


RETRY = [
    # (why, attempt, max_attempts, retry?)
    (OpenFailure.GOING_AWAY, 1, 3, True),
    (OpenFailure.GOING_AWAY, 2, 3, True),
    (OpenFailure.GOING_AWAY, 3, 3, False),
    (OpenFailure.OVER_LIMIT, 1, 3, True),
    (OpenFailure.OVER_LIMIT, 3, 3, False),
    (OpenFailure.PEER_REFUSED, 1, 3, False),
    (OpenFailure.GOING_AWAY, 1, 1, False),
]


@pytest.mark.parametrize("why,attempt,max_attempts,expected", RETRY)
def test_retry_budget(why, attempt, max_attempts, expected):
    assert PoolCore(max_attempts=max_attempts).retry(why, attempt) is expected


def test_the_caps_are_settable_and_read_back():
    core = PoolCore(max_streams=7, idle_timeout=9.0, max_connections=3, refusal_hold=0.5, max_attempts=4)
    assert (core.max_streams, core.idle_timeout, core.max_connections, core.refusal_hold, core.max_attempts) == (
        7, 9.0, 3, 0.5, 4)
    play(core, [("acquire", K, 0.0, "->", (DIAL, None)), ("add", K, 1, 100, 0.0)])
    (entry,) = core.entries(K)
    assert (entry.limit, entry.active, entry.retired) == (7, 0, False)
    assert core.dialing(K) is False
