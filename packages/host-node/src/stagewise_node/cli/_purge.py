"""`stagewise runs purge --finished-before 30d [--archive] [--batch N]`: finished runs
deleted batch after batch (`run.purge`), with the count so far on screen."""

from __future__ import annotations

from rich.text import Text

from stagewise import RunPurge
from stagewise_node.cli._compose import client
from stagewise_node.cli._listing import parse_when
from stagewise_node.cli._output import CliError, console
from stagewise_node.cli._render import Times


async def purge_runs(
    *, db: str, finished_before: str, archive: bool, batch: int, times: Times
) -> None:
    """Purge every run that finished before the cutoff (a duration back from now on the
    database's clock, or a time), one short transaction per batch.

    Raises:
        CliError: the cutoff is neither a duration nor a time, or the batch is out of range.
    """
    if not 1 <= batch <= 10_000:
        raise CliError(f"--batch must be from 1 to 10000, got {batch}")
    async with client(db, None, migrate=False) as c:
        cutoff = parse_when(
            finished_before, now=c.kernel.clock.now(), utc=times.utc, option="--finished-before"
        )
        purged = archived = 0
        with console.status(f"purging runs finished before {times.full(cutoff)}") as status:
            while True:
                command = RunPurge(finished_before=cutoff, limit=batch, archive=archive)
                result = await c.kernel.dispatch(command)
                purged, archived = purged + result.purged, archived + result.archived
                status.update(f"purged {purged} run(s) finished before {times.full(cutoff)}")
                if not result.more:
                    break
    note = f" ({archived} archived to the blob store under archive/)" if archive else ""
    console.print(Text(f"purged {purged} run(s) finished before {times.full(cutoff)}{note}"))
