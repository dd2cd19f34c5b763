"""Two runs of one score date at once (issue 15): which one won, and the one clear error of the side that lost.

The newest run of a date wins. A plan drops the stage tables of the date's earlier runs and marks them failed
(``abandoned: superseded ...``, :func:`ml.score.plan.cleanup_stages`); a swap refuses to replace the partition of a
run of the date that started later and already succeeded (two plans that did not see each other). The losing side
can notice at any step (its bucket finds the run failed or its stage gone mid-COPY; its finalize finds the run failed,
or the stage gone during the checks or the swap) and then raises :func:`lost_error`'s
:class:`~ml.errors.RunSuperseded` (a ScoringError) instead of the raw database error it ran into.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.errors import RunSuperseded
from ml.score.tables import sql_text


def winner_of(conn: sa.Connection, run_id: str) -> Any:
    """The run that beat ``run_id`` (``run_id, started_at, status, score_date``), or None when no other run of its
    date did (``run_id`` succeeded, is still in the race, or failed for a reason of its own)."""
    return conn.execute(sa.text(sql_text("race_winner")), {"run_id": run_id}).first()


def lost_error(engine: Engine | sa.Connection, run_id: str) -> RunSuperseded | None:
    """The error (a ScoringError) of a run that lost to another run of its date (one line naming both runs, the date
    and when the winner started), or None if it did not lose.

    With an engine it never raises: a database that cannot answer gives None (the caller's own error stands). With a
    connection (the caller's transaction) a database error propagates, so the caller's transaction handling sees it.
    """
    if isinstance(engine, sa.Connection):
        row = winner_of(engine, run_id)
    else:
        try:
            with engine.connect() as conn:
                row = winner_of(conn, run_id)
        except sa.exc.SQLAlchemyError:
            return None
    if row is None:
        return None
    started = row.started_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if row.started_at else "?"
    return RunSuperseded(f"scoring run {run_id} of score_date {row.score_date} lost to run {row.run_id} (started "
                         f"{started}, {row.status}): another run of this date won; nothing of this run was kept")
