"""A taken port is one clear error before the demo or the local Airflow starts anything (ml.dev.services)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ml.cli import main
from ml.dev.services import ensure_port_free
from ml.errors import ServiceError


@pytest.fixture(params=["127.0.0.1", "0.0.0.0"])
def listening(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port something listens on (loopback only, or every address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((request.param, 0))
        s.listen()
        yield s.getsockname()[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_taken_port_names_the_service_the_port_and_the_way_out(listening: int) -> None:
    with pytest.raises(ServiceError, match=rf"^the UI: port {listening} is already in use .*; pass --port$"):
        ensure_port_free(listening, "the UI", "pass --port")


def test_free_port_passes() -> None:
    ensure_port_free(_free_port(), "the UI", "pass --port")


def _propensity(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the ``propensity`` entry point; its exit code and stderr."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    return int(exited.value.code), capsys.readouterr().err


def test_demo_refuses_a_taken_port_before_doing_anything(listening: int, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PROPENSITY_STATE_DIR", str(tmp_path))
    code, err = _propensity(["demo", "--port", str(listening), "--api-port", str(_free_port())], capsys)
    assert code == 1
    assert err.startswith("error: Airflow api-server") and f"port {listening} is already in use" in err
    assert "pass --port" in err and len(err.strip().splitlines()) == 1  # one line, no traceback
    assert list(tmp_path.iterdir()) == []  # no services, no data, no Airflow home


def test_demo_refuses_a_taken_api_port(listening: int, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PROPENSITY_STATE_DIR", str(tmp_path))
    code, err = _propensity(["demo", "--port", str(_free_port()), "--api-port", str(listening)], capsys)
    assert code == 1 and f"port {listening} is already in use" in err and "--api-port" in err
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_one_port_for_two_servers(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PROPENSITY_STATE_DIR", str(tmp_path))
    port = _free_port()
    code, err = _propensity(["demo", "--port", str(port), "--api-port", str(port)], capsys)
    assert code == 2 and "--port and --api-port are both" in err


def test_airflow_up_refuses_a_taken_port_before_starting_services(listening: int, tmp_path, monkeypatch,
                                                                  capsys) -> None:
    monkeypatch.setenv("PROPENSITY_STATE_DIR", str(tmp_path))
    code, err = _propensity(["airflow", "up", "--port", str(listening)], capsys)
    assert code == 1 and err.startswith("error: Airflow api-server") and f"port {listening}" in err
    assert "propensity airflow down" in err
    assert list(tmp_path.iterdir()) == []  # no embedded PostgreSQL or Redis was started
