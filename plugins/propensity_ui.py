"""Airflow UI plugin: a "Propensity" entry in the navigation showing open alerts, realized vs expected performance,
drift against the training reference, the model leaderboard, the latest runs, validation failures, drift and links
to reports (Airflow 3 plugin: a FastAPI app + an external view).

Only glue lives here: the data and HTML come from ``ml.dashboard``. The pipeline database URL comes from the
``propensity_postgres`` connection (env-var connections are read directly, so the api-server needs no Task SDK).
Auth: every route of this app (the page and its report / Data Docs file route, which show sample rows with user
ids) requires an authenticated Airflow user: Airflow's own ``requires_authenticated()`` dependency reads the
UI's session cookie or an ``Authorization: Bearer`` token, exactly as the api-server's routes do; anonymous requests
get 401 (tests/integration/test_plugin_auth.py, through the api-server's real app).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse

from airflow.api_fastapi.core_api.security import requires_authenticated
from airflow.plugins_manager import AirflowPlugin

require_user = requires_authenticated()  # one instance: tests of the page's content override exactly this
app = FastAPI(
    title="Propensity pipeline page",
    docs_url=None,
    redoc_url=None,
    dependencies=[Depends(require_user)],  # issue 16: no anonymous access to the page or its files
)


def _pipeline_url() -> str:
    """The ``propensity_postgres`` connection's URL (env-var connection: a URI or JSON with extra.url), else an
    explicitly set ``PROPENSITY_POSTGRES_URL``; otherwise a :class:`ml.errors.ConfigError` naming the connection
    (served as a 503). Never starts or looks for an embedded server."""
    from ml.errors import ConfigError
    from ml.settings import get_settings

    raw = os.environ.get("AIRFLOW_CONN_PROPENSITY_POSTGRES", "")
    if raw.startswith("{"):
        conn = json.loads(raw)
        url = conn.get("extra", {}).get("url") or ""
    else:
        url = raw
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    url = url or get_settings().postgres_url or ""
    if not url:
        raise ConfigError("Airflow connection 'propensity_postgres' is not defined for the api-server: set "
                          "AIRFLOW_CONN_PROPENSITY_POSTGRES (a URI or JSON with extra.url) or PROPENSITY_POSTGRES_URL")
    return url


def _reports_root() -> Path:
    from ml.settings import get_settings

    return Path(get_settings().location("reports")).resolve()


@app.get("/", response_class=HTMLResponse)
def page() -> str:
    from ml.dashboard import collect_dashboard, render_dashboard
    from ml.db import make_engine
    from ml.errors import ConfigError

    try:
        url = _pipeline_url()
    except ConfigError as e:
        raise HTTPException(status_code=503, detail=str(e)) from e
    engine = make_engine(url)
    try:
        data = collect_dashboard(engine)
    finally:
        engine.dispose()
    docs = _reports_root() / "data_docs" / "index.html"
    return render_dashboard(data, files_base="files", data_docs_href=f"files?path={docs}" if docs.exists() else None)


@app.get("/files")
def files(path: str = Query(..., description="A report file under the reports location")) -> FileResponse:
    """Serve a model report or Data Docs file, only from inside the reports location."""
    root = _reports_root()
    target = Path(path.removeprefix("file://")).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(status_code=404, detail="no such report")
    return FileResponse(target)


class PropensityPlugin(AirflowPlugin):
    name = "propensity"
    fastapi_apps = [{"app": app, "url_prefix": "/propensity", "name": "Propensity pipeline page"}]
    external_views = [
        {
            "name": "Propensity",
            "href": "propensity/",
            "destination": "nav",
            "url_route": "propensity",
            "category": "browse",
        }
    ]
