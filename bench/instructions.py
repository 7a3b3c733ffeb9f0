"""Instructions per callback on the durable path, counted with callgrind: a figure that, unlike
times on these noisy machines, does not move when the machine does.

    python bench/instructions.py [--groups 1 64]

For each group size, the receiver's group commit (parse the body, insert the inbox row, correlate,
decide, write the changes, commit) runs in one process under ``valgrind --tool=callgrind`` for
100 and for 700 task callbacks of waiting runs; the difference between the two counts, divided by
600, is what one callback costs, with the process's start-up cancelled out. Two sizes show the
fixed cost of a group's transaction: a callback alone pays all of it, one in a group of 64 a
sixty-fourth. Needs valgrind; takes a few minutes (the two counts of each size run in parallel).

Compare a change by running this before and after it: the same code gives the same count within
about 1 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import ingest
from orchestrator.store import migrate

SMALL, LARGE = 100, 700


def prepare(workdir: Path, runs: int) -> None:
    """A database of waiting runs and the callbacks that complete them (outside valgrind)."""
    migrate.upgrade(f"sqlite:///{workdir / 'vodflow.db'}")
    (workdir / "workflows").mkdir()
    (workdir / "workflows" / "bench.yaml").write_text(ingest.WORKFLOW)
    bodies = asyncio.run(ingest.populate(f"sqlite:///{workdir / 'vodflow.db'}", runs))
    (workdir / "bodies.json").write_text(json.dumps([b.decode() for b in bodies]))


def commit_callbacks(template: Path, count: int, group: int) -> None:
    """The measured part: ``count`` callbacks through the writer's group commit, ``group`` at a
    time, on a copy of the prepared database."""
    data = Path(tempfile.mkdtemp())
    shutil.copy(template / "vodflow.db", data / "vodflow.db")
    os.environ.update(
        {
            "VODFLOW_DATA_DIR": str(data),
            "VODFLOW_WORKFLOWS": str(template / "workflows"),
            "VODFLOW_ENGINE": "false",
            "VODFLOW_VOD_ENDPOINT": "http://127.0.0.1:9/v2/index.php",
            "VODFLOW_VOD_SECRET_ID": "AKIDbench",
            "VODFLOW_VOD_SECRET_KEY": "bench",
            "VODFLOW_CALLBACK_TOKEN": ingest.TOKEN,
            "VODFLOW_LOG_LEVEL": "WARNING",
        }
    )
    from orchestrator.app import settle_collector
    from orchestrator.receiver import _Pending, inbox_row
    from orchestrator.vod.events import parse_event

    texts: list[str] = json.loads((template / "bodies.json").read_text())[:count]

    async def run() -> None:
        services = ingest.full_app().state.services
        settle_collector()  # as the server does once it starts
        loop = asyncio.get_running_loop()
        await services.db.write(services.registry.record_versions, datetime.now(UTC))
        for start in range(0, len(texts), group):
            pending = []
            for text in texts[start : start + group]:
                event = parse_event(text.encode(), source="vod")
                pending.append(_Pending(inbox_row(event, text, "vod"), event, loop.create_future()))
            _, after_commit = await services.db.write(services.writer._commit, pending)
            after_commit()
        await services.db.close()

    asyncio.run(run())
    shutil.rmtree(data)


def count_instructions(
    template: Path, count: int, group: int, out: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--measure",
            str(template),
            str(count),
            str(group),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def total(out: Path) -> int:
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"{out}: no instruction total in callgrind's output")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        template, count, group = args.measure
        commit_callbacks(Path(template), int(count), int(group))
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench/instructions.py needs valgrind (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        template = workdir / "template"
        template.mkdir()
        prepare(template, LARGE)  # 2 callbacks per run, so more than LARGE of them
        each: dict[int, float] = {}
        for group in args.groups:
            outs = [workdir / f"g{group}-{n}.out" for n in (SMALL, LARGE)]
            procs = [
                count_instructions(template, n, group, out)
                for n, out in zip((SMALL, LARGE), outs, strict=True)
            ]
            for proc in procs:
                if proc.wait() != 0:
                    sys.exit(f"the callgrind run for groups of {group} failed")
            each[group] = (total(outs[1]) - total(outs[0])) / (LARGE - SMALL)
            millions = each[group] / 1e6
            print(f"groups of {group:>3}: {millions:6.3f} million instructions per callback")
        if len(each) > 1:
            low, high = min(each), max(each)
            ratio = each[low] / each[high]
            print(f"a callback in groups of {low} costs {ratio:.2f}x one in groups of {high}")


if __name__ == "__main__":
    main()
