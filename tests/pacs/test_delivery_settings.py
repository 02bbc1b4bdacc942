"""Delivery configuration without a network: destinations parsed from settings text (and refused
with a sentence), the calling AE title, and the retry policy's backoff."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.metrics import GatewayMetrics
from service.pacs.delivery import DeliveryError, DeliveryOutcome, RetryPolicy
from service.pacs.destination import (
    DestinationKind,
    DicomwebDestination,
    DimseDestination,
    parse_destination,
)
from service.settings import Settings
from testing.onnx_fixture import FixtureModel, write_fixture_repository


@pytest.fixture(scope="module")
def fixture_model(tmp_path_factory: pytest.TempPathFactory) -> FixtureModel:
    return write_fixture_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dicomweb:http://pacs:8042/dicom-web", DicomwebDestination("http://pacs:8042/dicom-web")),
        (" dicomweb:https://pacs/dicom-web/ ", DicomwebDestination("https://pacs/dicom-web")),
        ("dimse:ORTHANC@127.0.0.1:4242", DimseDestination("ORTHANC", "127.0.0.1", 4242)),
        ("dimse:PACS A@pacs.example.org:104", DimseDestination("PACS A", "pacs.example.org", 104)),
        ("dimse:PACS@[::1]:11112", DimseDestination("PACS", "::1", 11112)),
    ],
)
def test_destinations_parse(text: str, expected: object) -> None:
    destination = parse_destination(text)
    assert destination == expected
    assert parse_destination(str(destination)) == destination


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pacs:104", "is not a destination"),
        ("http://pacs/dicom-web", "is not a destination"),
        ("dicomweb:pacs:8042/dicom-web", "http\\(s\\) URL"),
        ("dicomweb:ftp://pacs/dicom-web", "http\\(s\\) URL"),
        ("dicomweb:http://pacs:port/dicom-web", "not a number"),
        ("dicomweb:http://pacs/dicom-web?x=1", "no query"),
        ("dimse:pacs:104", "AET@host:port"),
        ("dimse:PACS@pacs", "AET@host:port"),
        ("dimse:PACS@pacs:0", "1 to 65535"),
        ("dimse:PACS@pacs:70000", "1 to 65535"),
        ("dimse:PACS@pacs:104x", "1 to 65535"),
        ("dimse:AN_AE_TITLE_TOO_LONG@pacs:104", "1 to 16 characters"),
        ("dimse:   @pacs:104", "1 to 16 characters"),
        ("dimse:PA\\CS@pacs:104", "backslash"),
    ],
)
def test_bad_destinations_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_destination(text)


def test_settings_read_destinations_and_delivery_options(
    fixture_model: FixtureModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADCT_MODEL_REPOSITORY", str(fixture_model.repository))
    monkeypatch.setenv(
        "HEADCT_PACS_DESTINATIONS", "dicomweb:http://pacs:8042/dicom-web, dimse:PACS@pacs:104,"
    )
    monkeypatch.setenv("HEADCT_PACS_CALLING_AET", "TRIAGE")
    monkeypatch.setenv("HEADCT_PACS_RETRY_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("HEADCT_PACS_RETRY_BASE_S", "2")
    monkeypatch.setenv("HEADCT_PACS_RETRY_CAP_S", "60")
    settings = Settings()
    assert settings.pacs_destinations == (
        DicomwebDestination("http://pacs:8042/dicom-web"),
        DimseDestination("PACS", "pacs", 104),
    )
    assert settings.pacs_calling_aet == "TRIAGE"
    assert RetryPolicy.from_settings(settings) == RetryPolicy(4, 2.0, 2.0, 60.0)


def test_the_default_is_no_destination(fixture_model: FixtureModel) -> None:
    settings = Settings(model_repository=fixture_model.repository)
    assert settings.pacs_destinations == ()
    assert RetryPolicy.from_settings(settings) == RetryPolicy()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HEADCT_PACS_DESTINATIONS", "dimse:PACS@pacs", "HEADCT_PACS_DESTINATIONS"),
        ("HEADCT_PACS_CALLING_AET", "A_CALLING_AE_TOO_LONG", "HEADCT_PACS_CALLING_AET"),
        ("HEADCT_PACS_RETRY_CAP_S", "1", "HEADCT_PACS_RETRY_CAP_S"),
        ("HEADCT_PACS_RETRY_MAX_ATTEMPTS", "0", "pacs_retry_max_attempts"),
    ],
)
def test_bad_delivery_settings_stop_start_up(
    fixture_model: FixtureModel,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv("HEADCT_MODEL_REPOSITORY", str(fixture_model.repository))
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_backoff_grows_by_the_factor_within_jitter_and_stops_at_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base_s=1.0, factor=3.0, cap_s=20.0)
    rng = random.Random(5)
    for attempt, backoff in [(1, 1.0), (2, 3.0), (3, 9.0), (4, 20.0), (9, 20.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert backoff / 2 <= min(delays) and max(delays) <= backoff
        assert max(delays) - min(delays) > 0.3 * backoff  # jittered, not in step


def test_retries_only_retryable_failures_while_attempts_remain() -> None:
    policy = RetryPolicy(max_attempts=3)
    transient = DeliveryError("timed out", retryable=True)
    permanent = DeliveryError("rejected", retryable=False)
    assert [policy.retries_after(n, transient) for n in (1, 2, 3)] == [True, True, False]
    assert not policy.retries_after(1, permanent)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "at least one attempt"),
        ({"base_s": 0}, "base_s"),
        ({"base_s": 10, "cap_s": 5}, "base_s <= cap_s"),
        ({"factor": 0.5}, "factor"),
    ],
)
def test_a_bad_policy_is_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="from 1"):
        RetryPolicy().delay(0)


def test_every_delivery_outcome_is_exported_from_the_start() -> None:
    exposition = GatewayMetrics().exposition().decode()
    for kind in DestinationKind:
        for outcome in DeliveryOutcome:
            assert (
                f'headct_pacs_deliveries_total{{destination_kind="{kind}",outcome="{outcome}"}} 0.0'
                in exposition
            )


def test_the_study_lease_must_outlast_a_triage_only_where_there_is_a_store(
    tmp_path: Path,
) -> None:
    """A lease shorter than the ingest and inference deadlines would let a second worker take a
    study still being triaged; without a store (the gateway alone, headct batch) it means
    nothing and is not checked."""
    short = {"study_lease_s": 60, "ingest_timeout_s": 30, "inference_timeout_s": 120}
    assert Settings(**short).study_lease_s == 60
    with pytest.raises(ValidationError, match="HEADCT_STUDY_LEASE_S"):
        Settings(data_dir=tmp_path, **short)
