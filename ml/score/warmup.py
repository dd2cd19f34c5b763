"""Compile the scoring path's numba kernels once, before the night fans out.

The exact TreeSHAP explainer (:mod:`ml.explain`), the insight selector (:mod:`ml.insights`) and the binary row
encoder (:mod:`ml.score.encode`) are numba kernels compiled with ``cache=True``: the first process that calls one
compiles it and writes the machine code to numba's on-disk cache (``__pycache__`` beside the module, or
``NUMBA_CACHE_DIR``); every later process loads it in milliseconds. On a cold cache (a fresh clone, a new release)
every bucket task of the first night would compile the same kernels at the same time: measured on 2 cores, the
first wave of 4 bucket processes spent about 60 s each compiling (explain 28 s, encode 22 s, insights 12 s for
25k pairs; the second wave 1.5 s for the same three). :func:`warm_kernels` runs a tiny synthetic block through
exactly the code a bucket runs, so compilation happens once, in one process: ``propensity warmup`` (run by
``make venv`` and the Docker image build) and the benchmarks call it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ml.ensemble import Ensemble
    from ml.settings import Settings

log = logging.getLogger(__name__)


def tiny_ensemble(threads: int = 1, seed: int = 0) -> Ensemble:
    """A real four-member ensemble (CatBoost, XGBoost, LightGBM, random forest) of a few trees each, fitted in a
    second or two on synthetic rows with the production feature list: it has the same array types as a trained
    model, so the kernels it compiles are the ones a real night loads."""
    from ml.ensemble import MEMBER_NAMES, Ensemble, fit_blend, member_kind, nan_fill_values
    from ml.features import FEATURE_COLUMNS
    from ml.tune import default_params

    names = list(FEATURE_COLUMNS)
    rng = np.random.default_rng(seed)
    n = 600
    X = rng.gamma(2.0, 3.0, (n, len(names)))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = (rng.random(n) < 1 / (1 + np.exp(3.0 - 0.2 * np.nan_to_num(X[:, 0])))).astype(float)
    y[:2] = (0.0, 1.0)
    fill = nan_fill_values(names)
    w = np.ones(n)
    models = {}
    for m in MEMBER_NAMES:
        kind = member_kind(m)
        params = {**default_params(m)}
        for key in ("iterations", "n_estimators"):  # CatBoost's and the others' tree counts (ml.tune.default_params)
            if key in params:
                params[key] = min(int(params[key]), 8)
        data = kind.prepare(X, y, w, X, y, w, names)
        models[m] = kind.fit(params, data, feature_names=names, seed=seed, threads=threads).model
    margins = np.column_stack([member_kind(m).predict_margin(models[m], X, threads) for m in MEMBER_NAMES])
    blend = fit_blend(margins, y)
    return Ensemble(models, dict(zip(MEMBER_NAMES, blend.weights)), (blend.a, blend.b), names, threshold=0.5,
                    nan_fill=fill, threads=threads)


def warm_kernels(ensemble: Ensemble, settings: Settings, rows: int = 64) -> float:
    """Run ``rows`` synthetic pairs through the bucket's own code (explain, predict, insights, score and sample
    encoders) so every numba kernel is compiled or loaded from the on-disk cache; returns the seconds it took."""
    from ml.score.batch import sample_mask, score_block
    from ml.score.encode import encode_sample_rows, encode_score_rows

    t = time.perf_counter()
    rng = np.random.default_rng(1)
    X = rng.gamma(2.0, 3.0, (rows, len(ensemble.feature_names)))
    X[rng.random(X.shape) < 0.1] = np.nan
    uid = np.arange(rows, dtype=np.int64) + 1
    pid = np.arange(rows, dtype=np.int64) % 7 + 1
    day = dt.date(2000, 1, 1)
    for fraction in {1.0, float(settings.score_verify_fraction)}:  # both probability paths of score_block
        block = score_block(ensemble, uid, pid, X, settings.model_copy(update={"score_verify_fraction": fraction}))
        encode_score_rows(block, day, "warmup", "warmup_run")
        encode_score_rows(block, day, "warmup", "warmup_run", "experiment", "arm")
    keep = sample_mask(uid, pid, 1.0)
    encode_sample_rows(day, "warmup_run", 0, uid[keep], pid[keep], X[keep])
    seconds = time.perf_counter() - t
    log.info("scoring kernels ready in %.1fs (%s)", seconds,
             "compiled and cached" if seconds > 5 else "loaded from numba's on-disk cache")
    return seconds
