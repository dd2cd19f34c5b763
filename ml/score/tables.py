"""The scoring tables' names and the text of the scoring SQL statements (``sql/scoring/*.sql``).

A run writes its rows to its stage table ``scoring.scores_stage_<run_id>`` (run id ``YYYYMMDD_<12 hex digits>``);
the swap renames the stage to the day's partition ``scoring.scores_pYYYYMMDD``.

Each statement of the scoring module is one file under ``sql/scoring/``, read with :func:`ml.db.read_sql` (the loader
of every SQL file under ``sql/``). Bind parameters are written ``:name`` (SQLAlchemy's style; :func:`sql_text` turns
them into psycopg's ``%(name)s`` for statements run on a psycopg 3 cursor). A ``{name}`` in a file is a placeholder
for an identifier (a stage or partition table, an index, a constraint) or an included query, filled with
``psycopg.sql`` composables, never with values; a literal brace is written twice.
"""

from __future__ import annotations

import datetime as dt
import re

from psycopg import sql as psql

from ml.db import read_sql
from ml.errors import ScoringError

STAGE_PREFIX = "scores_stage_"
_RUN_ID_RE = re.compile(r"^[0-9]{8}_[0-9a-f]{12}$")


def partition_name(day: dt.date) -> str:
    """``scores_pYYYYMMDD``: the name of the partition of scoring.scores holding score date ``day``."""
    return f"scores_p{day:%Y%m%d}"


def stage_name(run_id: str) -> str:
    """``scores_stage_<run_id>``: the stage table of a run. Raises ScoringError on a malformed run id."""
    if not _RUN_ID_RE.match(run_id):
        raise ScoringError(f"invalid scoring run id {run_id!r}")
    return STAGE_PREFIX + run_id


def scoring_table(name: str) -> psql.Identifier:
    """The quoted identifier ``scoring.<name>``."""
    return psql.Identifier("scoring", name)


def sql_text(name: str, *, pyformat: bool = False, **parts: psql.Composable) -> str:
    """The statement of ``sql/scoring/<name>.sql`` with each ``{placeholder}`` replaced by ``parts[placeholder]``
    (e.g. ``stage=scoring_table(stage)``). ``pyformat``: for a psycopg 3 cursor (``:name`` -> ``%(name)s``, literal
    ``%`` doubled); otherwise the text is for ``sqlalchemy.text``."""
    text = read_sql(f"scoring/{name}.sql")
    if pyformat:
        from ml.features import to_pyformat

        text = to_pyformat(text)
    return psql.SQL(text).format(**parts).as_string()
