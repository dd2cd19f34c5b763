# The project's Airflow image: the official apache/airflow image of the pinned version, plus our locked
# requirements and the `ml` package + SQL baked in (dags/ and plugins/ are mounted by docker-compose).
FROM apache/airflow:3.3.2-python3.11

USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 curl \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
USER airflow

COPY --chown=airflow:root requirements.txt /opt/propensity/requirements.txt
RUN pip install --no-cache-dir -r /opt/propensity/requirements.txt

COPY --chown=airflow:root pyproject.toml README.md /opt/propensity/
COPY --chown=airflow:root ml /opt/propensity/ml
COPY --chown=airflow:root sql /opt/propensity/sql
RUN pip install --no-cache-dir --no-deps -e /opt/propensity
ENV PYTHONPATH=/opt/propensity \
    NUMBA_CACHE_DIR=/opt/airflow/.numba_cache
# compile the scoring kernels into NUMBA_CACHE_DIR once, at build time (ml/score/warmup.py)
RUN python -m ml --log-level WARNING warmup
