"""The query frontend's instructions per request: counted, not timed.

    python bench/instructions.py main WORKTREE [abc123 ...]     (needs valgrind)

The loop of bench/inprocess.py's "32 clients, one batch" (cache off, 200 doubles, the
replica's reply settled in place) runs under valgrind's callgrind twice, for a short and a
long number of rounds; the difference of the two counts, divided by the extra requests, is
what one request costs, without the start-up. On this shared machine timings in process
moved by 5 to 20% between runs of the same code, which hides a change of a few percent;
a count does not move with the machine's other load. It does not see cache misses or
system calls: a lever it finds still has to show under load (bench/levers.py).

A revision is a git revision (exported with git archive) or WORKTREE, this checkout; its
bench/inprocess.py must have ``request`` and ``frontend`` (since session 8's levers).
"""
import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIENTS = 32
ROUNDS_SHORT, ROUNDS_LONG = 30, 150
# Rounds before either count starts to differ: the adaptive batch limit grows by one a
# batch from 1 (the backlog of the first rounds is answered by about round 64), and the
# latency histogram's reservoir (4,096 values) fills, as it does in the first second of load.
WARM_UP_ROUNDS = 140


async def serve_rounds(tree: Path, rounds: int) -> None:
    """``rounds`` rounds of CLIENTS requests through ``tree``'s frontend (in this process).

    The rounds of ``inprocess.per_request``, without its timing, its slices and its check of
    every slice's answers (which would add to the count of the longer run); written here
    rather than called, because the revision's own bench/inprocess.py is the one loaded,
    and revisions before cfff35b have no ``per_request`` of this shape."""
    sys.path.insert(0, str(tree / "bench"))
    import inprocess
    requests = [inprocess.request("%d.5" % i) for i in range((WARM_UP_ROUNDS + ROUNDS_LONG) * CLIENTS)]
    make_connection, reply = inprocess.frontend(cache_size=0)
    connections = []
    for _ in range(CLIENTS):
        connection, transport = make_connection(), inprocess.Transport()
        connection.connection_made(transport)
        connections.append((connection, transport))
    sent = 0
    for _ in range(WARM_UP_ROUNDS + rounds):
        for connection, _transport in connections:
            connection.data_received(requests[sent])
            sent += 1
        reply()
        await asyncio.sleep(0)
    # The same check for either run length, so that it cancels out. (Under valgrind, some
    # queries of the warm-up pass their objective, 1 s, and get the default.)
    last_answers = [transport.written[-1] for _connection, transport in connections]
    assert all(answer.find(b'"default":false') >= 0 for answer in last_answers), last_answers[:2]


def count(tree: Path, rounds: int, scratch: Path) -> int:
    """Instructions that ``rounds`` rounds (and the start-up) take, as callgrind counts them."""
    out = scratch / f"callgrind.{rounds}.out"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                    __file__, "--serve", str(tree), str(rounds)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONHASHSEED": "0"})     # the same dict layouts in every run
    for line in out.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def per_request(revision: str, scratch: Path) -> float:
    from revisions import export
    tree = export(revision, scratch / "tree")
    extra = (ROUNDS_LONG - ROUNDS_SHORT) * CLIENTS
    return (count(tree, ROUNDS_LONG, scratch) - count(tree, ROUNDS_SHORT, scratch)) / extra


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        from_tree = Path(sys.argv[2])
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)       # as clipper/__main__.py sets it
        sys.path.insert(0, str(from_tree))
        from clipper import eventloop
        eventloop.run(serve_rounds(from_tree, int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="+", help="git revisions, or WORKTREE")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    first = None
    for revision in args.revisions:
        with tempfile.TemporaryDirectory(prefix="instructions-") as scratch:
            instructions = per_request(revision, Path(scratch))
        first = first or instructions
        print(f"{revision:>20}  {instructions:9,.0f} instructions per request  {instructions / first:5.3f}x the first",
              flush=True)


if __name__ == "__main__":
    main()
