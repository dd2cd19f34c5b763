"""Nightly batch scoring: plan -> one batch per user_id hash bucket -> finalize (checks + atomic partition swap).

One row of ``scoring.scores`` is one (score_date, user_id, product_id) pair active at the score date's midnight
(UTC): its calibrated probability, exact SHAP contributions in log-odds (``sum(contributions) + base_value ==
logit(probability)``), the top-k contributions, reason codes with texts, and a recommendation tier.

Life of a run (the same functions serve the DAG ``score_active_pairs``, the CLI ``propensity score`` and the tests):

1. :func:`plan_run` resolves the model (default: the champion), drops stage tables left by failed or crashed runs,
   counts the active pairs per bucket, records a ``scoring.runs`` row (status ``running``) with one
   ``scoring.run_batches`` row per bucket, and creates the run's stage table ``scoring.scores_stage_<run_id>``
   (``LIKE scoring.scores`` with its primary key and checks, plus a check pinning ``score_date`` to the day, so the
   later ATTACH needs no scan). It returns small :class:`BatchSpec` descriptors (the DAG's XCom), never data.
2. :func:`score_batch` (one per bucket, in parallel) streams the bucket's features (``ml.features``), predicts,
   explains (exact TreeSHAP through ``Ensemble.explain``), derives insights (``ml.insights``) and writes the rows
   into the stage with one psycopg 3 binary COPY, block by block (rows encoded by one compiled numba pass; a writer
   thread streams block k while block k + 1 is computed). The COPY, a deterministic feature sample (the drift
   reference) and the batch's ``succeeded`` mark commit in one transaction; a retry of a bucket that had committed
   deletes its rows first, so retries never duplicate.
3. :func:`finalize_run` checks the stage with Great Expectations (row count == planned pairs, probabilities in
   [0, 1], no null or NaN contribution, the largest additivity residual on a sample <= tolerance), then in ONE
   transaction detaches and drops the day's old partition (if any), renames the stage to ``scores_pYYYYMMDD`` and
   attaches it. Readers see the old day or the new day, never a mix; a re-run replaces the day; a crash at any
   point before that commit leaves the previous partition untouched.

Errors raise :class:`ml.errors.ScoringError` naming the run, the date and the bucket.

Modules: :mod:`~ml.score.records` (the run's records: BatchSpec, RunPlan, BatchResult, CheckResult, RunSummary,
ScoredBlock), :mod:`~ml.score.tables` (table names; the statements of ``sql/scoring/``), :mod:`~ml.score.plan`
(step 1 and the model), :mod:`~ml.score.batch` (step 2), :mod:`~ml.score.encode` (the binary COPY rows),
:mod:`~ml.score.finalize` (step 3 and :func:`run_scoring`, the whole run in one process), :mod:`~ml.score.race`
(two runs of one date at once: which one won).
"""

from __future__ import annotations

from ml.dates import midnight_utc as as_of_of
from ml.dates import utc_date as as_date
from ml.pgcopy import COPY_HEADER, COPY_TRAILER
from ml.score.batch import sample_mask, score_batch, score_block
from ml.score.encode import SAMPLE_COLUMNS, SCORE_COLUMNS, encode_sample_rows, encode_score_rows
from ml.score.finalize import check_stage, fail_run, finalize_run, run_scoring
from ml.score.plan import MAX_BUCKETS, cleanup_stages, count_pairs_by_bucket, load_model, plan_run, resolve_model_version
from ml.score.records import BatchResult, BatchSpec, CheckResult, RunPlan, RunSummary, ScoredBlock
from ml.score.tables import partition_name, stage_name

__all__ = [
    "COPY_HEADER",
    "COPY_TRAILER",
    "MAX_BUCKETS",
    "SAMPLE_COLUMNS",
    "SCORE_COLUMNS",
    "BatchResult",
    "BatchSpec",
    "CheckResult",
    "RunPlan",
    "RunSummary",
    "ScoredBlock",
    "as_date",
    "as_of_of",
    "check_stage",
    "cleanup_stages",
    "count_pairs_by_bucket",
    "encode_sample_rows",
    "encode_score_rows",
    "fail_run",
    "finalize_run",
    "load_model",
    "partition_name",
    "plan_run",
    "resolve_model_version",
    "run_scoring",
    "sample_mask",
    "score_batch",
    "score_block",
    "stage_name",
]
