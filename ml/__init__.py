"""Purchase-propensity batch scoring pipeline: plain Python stages, orchestrated by Airflow (never imported here)."""

__version__ = "0.1.0"
