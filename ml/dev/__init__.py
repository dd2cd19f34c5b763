"""Development tooling, kept apart from the production pipeline in ``ml/``: embedded PostgreSQL and Redis
(:mod:`ml.dev.services`), a local Airflow runner (:mod:`ml.dev.local_airflow`), the end-to-end demo
(:mod:`ml.dev.demo`) and the synthetic REES46 generator (:mod:`ml.dev.generate`).

Production code paths (the stages, the DAG tasks in Airflow) never need it; the CLI and the API fall back to the
embedded services only when no URL is configured, and tests and benchmarks use the generator for their data.
"""
