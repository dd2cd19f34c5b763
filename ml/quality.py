"""Data-quality plumbing shared by every stage that checks data: the Great Expectations runner and the
``quality.validation_runs`` record.

* :class:`GxRunner` validates a pandas frame (or an already-built GX batch, e.g. of a SQL datasource) against an
  Expectation Suite and returns a :class:`SuiteOutcome`: one :class:`ExpectationOutcome` per expectation, flattened
  out of GX's result objects (type, arguments, ``meta``, severity, success, GX's ``result`` dict, exception message).
  Callers name their rules from ``meta`` (``meta["rule"]``) or from the type and arguments.
* :func:`ephemeral_context` is the one place a GX context is made: ephemeral (nothing on disk), progress bars off,
  optionally a filesystem Data Docs site. Great Expectations is imported lazily and once per process (it takes
  seconds), and its logging is quieted then (its INFO lines, e.g. one per ephemeral context, are noise in task logs).
* :func:`record_validation` inserts one row of ``quality.validation_runs`` (migration 0003) and returns its
  ``validation_id``: suite and file (or table) validated, success, row count, statistics and per-expectation
  results as jsonb (coerced by :func:`ml.jsonutil.dumps`: numpy, NaN, dates never break the insert), failed rule
  ids, and optional quarantine/report/Data Docs URIs, Airflow run id and validation time (UTC; default now()).

Serves :mod:`ml.validate` (event files, suite ``raw_events``; ingest records each file's report),
:mod:`ml.snapshots` (training snapshots, suite ``feature_snapshot``) and scoring's output checks on a SQL
datasource (suite ``score_output``: :meth:`GxRunner.context` + :meth:`GxRunner.validate_batch`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ml.jsonutil import dumps

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

DOCS_SITE = "propensity"


@cache
def gx() -> Any:
    """The ``great_expectations`` module, imported once per process with its logging and known warnings quieted."""
    import great_expectations

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    return great_expectations


def ephemeral_context(docs_dir: str | None = None) -> Any:
    """A fresh ephemeral GX context with progress bars off and, when ``docs_dir`` (a local directory) is given, a
    filesystem Data Docs site named :data:`DOCS_SITE` under it."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    import warnings

    # GX warns once per SQL datasource that is not one of its dialect-specific ones: expected for PostgreSQL here.
    # Set per context, not once per process: test runners and callers may reset the warning filters in between.
    warnings.filterwarnings("ignore", message=".*generic SQLDatasource.*")
    ctx = gx().get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir:
        ctx.add_data_docs_site(
            site_name=DOCS_SITE,
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    return ctx


# --- results ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpectationOutcome:
    """The result of one expectation, independent of GX's classes.

    ``kwargs`` are the expectation's arguments (``batch_id`` left out); ``meta`` is what the suite attached (e.g.
    ``{"rule": ..., "field": ...}``); ``severity`` is GX's (``critical`` unless the expectation says otherwise);
    ``result`` is GX's result dict as returned (``element_count``, ``unexpected_count``, ``observed_value``,
    ``partial_unexpected_list``, ``unexpected_rows``, ... depending on the result format); ``exception`` is the
    message when evaluating the expectation raised, else None.
    """

    expectation_type: str
    success: bool
    kwargs: dict[str, Any]
    meta: dict[str, Any]
    description: str | None
    severity: str
    result: dict[str, Any]
    exception: str | None = None

    @property
    def rule(self) -> str:
        """``meta["rule"]`` when the suite set one, else the expectation type."""
        return self.meta.get("rule") or self.expectation_type


@dataclass(frozen=True)
class SuiteOutcome:
    """The result of one suite on one batch: ``expectations`` in suite order, GX's ``statistics`` (evaluated /
    successful / unsuccessful counts, success percent) and the Data Docs page written for it (None if none)."""

    success: bool
    expectations: list[ExpectationOutcome]
    statistics: dict[str, Any] = field(default_factory=dict)
    data_docs_uri: str | None = None

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [e for e in self.expectations if not e.success]


def outcome_of(validation: Any, data_docs_uri: str | None = None) -> SuiteOutcome:
    """Flatten GX's ``ExpectationSuiteValidationResult`` into a :class:`SuiteOutcome`."""
    expectations = []
    for r in validation.results:
        cfg = r.expectation_config
        info = r.exception_info or {}
        expectations.append(
            ExpectationOutcome(
                expectation_type=cfg.type,
                success=bool(r.success),
                kwargs={k: v for k, v in (cfg.kwargs or {}).items() if k != "batch_id"},
                meta=dict(cfg.meta or {}),
                description=cfg.description,
                severity=str(getattr(getattr(cfg, "severity", None), "value", None) or "critical"),
                result=dict(r.result or {}),
                exception=str(info.get("exception_message")) if info.get("raised_exception") else None,
            )
        )
    return SuiteOutcome(
        success=bool(validation.success),
        expectations=expectations,
        statistics=dict(validation.statistics or {}),
        data_docs_uri=data_docs_uri,
    )


# --- running suites ---------------------------------------------------------------------------------------------------
class GxRunner:
    """Runs Expectation Suites in ephemeral Great Expectations contexts, with (optionally) a filesystem Data Docs
    site under ``docs_dir`` (a local directory; None: no Data Docs).

    One runner serves a whole process (e.g. every file of an ingest run): GX is imported once, on construction.
    Each validation gets a fresh context: GX caches metrics per batch id inside a context (a reused context would
    answer for the previous frame), and a fresh context also frees the validated frame afterwards. Creating one
    costs milliseconds; importing GX costs seconds, once.
    """

    SITE = DOCS_SITE

    def __init__(self, docs_dir: str | None = None) -> None:
        self._gx = gx()
        self.docs_dir = docs_dir

    def context(self) -> Any:
        """A fresh ephemeral context (with this runner's Data Docs site), for datasources other than a frame."""
        return ephemeral_context(self.docs_dir)

    def validate_frame(
        self,
        suite: Any,
        frame: pd.DataFrame,
        *,
        run_name: str = "frame",
        result_format: str | Mapping[str, Any] = "BASIC",
        data_docs: bool = True,
        datasource: str = "pandas",
        asset: str = "frame",
    ) -> SuiteOutcome:
        """Validate ``frame`` (one whole-frame batch of asset ``datasource/asset``) against ``suite`` (a
        ``gx.ExpectationSuite``, not yet added to any context).

        ``result_format`` is GX's (a name or a dict, e.g. ``{"result_format": "BASIC", "include_unexpected_rows":
        True, "partial_unexpected_count": 5}``). When the runner has a ``docs_dir`` and ``data_docs`` is true, the
        run goes through a checkpoint that updates the Data Docs site and the page URL is returned in the outcome;
        a Data Docs write error is logged and the frame validated without it (never loses the validation).
        """
        gx_ = self._gx
        ctx = self.context()
        frame_asset = ctx.data_sources.add_pandas(datasource).add_dataframe_asset(asset)
        batch_definition = frame_asset.add_batch_definition_whole_dataframe("all")
        fmt = dict(result_format) if isinstance(result_format, Mapping) else result_format
        batch = {"dataframe": frame}
        if not (data_docs and self.docs_dir):  # no page to write: validate the batch itself, without storing the
            # result in the context's validation results store (a ValidationDefinition run does; ~20 ms a file)
            return outcome_of(batch_definition.get_batch(batch_parameters=batch).validate(suite, result_format=fmt))
        suite = ctx.suites.add(suite)
        vd = ctx.validation_definitions.add(
            gx_.ValidationDefinition(name=run_name, data=batch_definition, suite=suite)
        )
        cp = ctx.checkpoints.add(
            gx_.Checkpoint(
                name=f"{datasource}_{asset}",
                validation_definitions=[vd],
                actions=[gx_.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[self.SITE])],
                result_format=fmt,
            )
        )
        try:
            result = cp.run(batch_parameters=batch, run_id=gx_.RunIdentifier(run_name=run_name))
        except Exception as e:  # noqa: BLE001 - a Data Docs write error must not lose the validation
            log.warning("Data Docs update failed (%s); validating without it", e)
            return outcome_of(vd.run(batch_parameters=batch, result_format=fmt))
        ((identifier, validation),) = result.run_results.items()
        url = None
        try:
            urls = ctx.get_docs_sites_urls(resource_identifier=identifier, site_name=self.SITE)
            url = urls[0]["site_url"] if urls else None
        except Exception as e:  # noqa: BLE001
            log.warning("could not resolve the Data Docs page: %s", e)
        return outcome_of(validation, url)

    @staticmethod
    def validate_batch(
        suite: Any, batch: Any, *, result_format: str | Mapping[str, Any] | None = None
    ) -> SuiteOutcome:
        """Validate a GX ``Batch`` already obtained from a context (e.g. a SQL table asset of
        :meth:`context`) against ``suite``; no Data Docs. ``result_format`` None: GX's default."""
        if result_format is None:
            return outcome_of(batch.validate(suite))
        fmt = dict(result_format) if isinstance(result_format, Mapping) else result_format
        return outcome_of(batch.validate(suite, result_format=fmt))


# --- the record -------------------------------------------------------------------------------------------------------
_INSERT = sa.text(
    "insert into quality.validation_runs (suite_name, file_name, file_uri, checksum_sha256, success, row_count,"
    " statistics, results, failed_rules, quarantine_uri, report_uri, data_docs_uri, dag_run_id, validated_at)"
    " values (:suite, :name, :uri, :sha, :ok, :rows, cast(:stats as jsonb), cast(:results as jsonb), :failed,"
    " :quarantine, :report, :docs, :dag_run, coalesce(cast(:at as timestamptz), now())) returning validation_id"
)


def record_validation(
    db: Engine | Connection,
    *,
    suite_name: str,
    file_name: str,
    file_uri: str,
    success: bool,
    row_count: int | None = None,
    statistics: Mapping[str, Any] | None = None,
    results: Sequence[Any] | None = None,
    failed_rules: Sequence[str] = (),
    checksum_sha256: str | None = None,
    quarantine_uri: str | None = None,
    report_uri: str | None = None,
    data_docs_uri: str | None = None,
    dag_run_id: str | None = None,
    validated_at: dt.datetime | None = None,
) -> int:
    """Insert one row of ``quality.validation_runs`` and return its ``validation_id``.

    ``db``: an Engine (the row is committed at once) or a Connection (the row joins the caller's transaction, e.g.
    together with the record that references it). ``statistics`` (an object) and ``results`` (a list, one entry per
    expectation or rule) are stored as jsonb after :func:`ml.jsonutil.to_jsonable`. ``validated_at`` None: the
    database's now().
    """
    params = {
        "suite": suite_name,
        "name": file_name,
        "uri": file_uri,
        "sha": checksum_sha256,
        "ok": bool(success),
        "rows": None if row_count is None else int(row_count),
        "stats": dumps(dict(statistics or {})),
        "results": dumps(list(results or [])),
        "failed": list(failed_rules),
        "quarantine": quarantine_uri,
        "report": report_uri,
        "docs": data_docs_uri,
        "dag_run": dag_run_id,
        "at": validated_at,
    }
    if isinstance(db, sa.engine.Engine):
        with db.begin() as conn:
            return int(conn.execute(_INSERT, params).scalar_one())
    return int(db.execute(_INSERT, params).scalar_one())
