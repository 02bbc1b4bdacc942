"""Schemathesis over the OpenAPI schema: generated requests, valid and invalid, never get a 500,
and the responses match what the schema documents. (Schemathesis' pytest plugin does not run on
this pytest, so each operation's strategy is driven by Hypothesis directly.)"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.app import create_app
from service.settings import Settings
from testing.onnx_fixture import FixtureModel

EXAMPLES = 12
API_KEY = "schemathesis-key"
AUTH = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def gateway_schema(fixture_model: FixtureModel, tmp_path_factory: pytest.TempPathFactory) -> Any:
    app = create_app(
        Settings(
            model_repository=fixture_model.repository,
            upload_dir=tmp_path_factory.mktemp("uploads"),
            onnx_intra_op_threads=1,
            api_keys=(API_KEY,),
        ),
        configure_logs=False,
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _fuzz(operation: Any, mode: GenerationMode) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(headers=AUTH)
        assert response.status_code < 500, f"{operation.label}: {response.text[:300]}"
        # Schema-valid bytes are still not a head CT: a 400/422 for them is right.
        case.validate_response(response, excluded_checks=[positive_data_acceptance], headers=AUTH)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests(gateway_schema: Any, mode: GenerationMode) -> None:
    operations = [result.ok() for result in gateway_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/triage", "GET /v1/model"}
    for operation in operations:
        try:
            _fuzz(operation, mode)
        except Unsatisfiable:
            # An operation with no parameters or body has no invalid request to make.
            assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET"
