"""Prometheus metrics of the gateway, on a registry of its own per app (tests stay isolated).

Labels are bounded sets only: routes are templates, findings are the card's 75 codes, experts are
indices, outcomes are error codes. No study, series or instance UID is ever a label.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from service.model_card import ModelCard
from service.pacs.delivery import DeliveryOutcome
from service.pacs.destination import DestinationKind
from service.schemas import TriageResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SLICE_BUCKETS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
_WEIGHT_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


class StoreMetrics:
    """The study store's metrics (PACS intake, the study worker, deliveries to the PACS), on the
    registry of the process that runs them: the gateway's, or ``headct listen``'s own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.instances = Counter(
            "headct_instances_received_total",
            "DICOM instances received for the study store, by route (dimse, stowrs) and outcome "
            "(stored, duplicate, or the refusal's error code).",
            ["route", "outcome"],
            registry=registry,
        )
        self.studies = Counter(
            "headct_studies_triaged_total",
            "Stored studies the worker triaged, by outcome (triaged, or the error code).",
            ["outcome"],
            registry=registry,
        )
        self.store_studies = Gauge(
            "headct_store_studies",
            "Studies in the store by state; receiving + pending is the triage queue.",
            ["state"],
            registry=registry,
        )
        self.pacs_deliveries = Counter(
            "headct_pacs_deliveries_total",
            "Attempts to deliver a study's SR and key image to a PACS destination, by outcome: "
            "delivered, retry (failed, tried again later) or dead_letter (given up, or the outputs "
            "could not be built).",
            ["destination_kind", "outcome"],
            registry=registry,
        )
        for kind in DestinationKind:  # zero series from the start, so rates are defined
            for outcome in DeliveryOutcome:
                self.pacs_deliveries.labels(destination_kind=kind.value, outcome=outcome.value)


class GatewayMetrics:
    """Every metric the gateway exports, registered on ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.store = StoreMetrics(r)
        self.requests = Counter(
            "headct_requests_total",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.stage_duration = Histogram(
            "headct_stage_duration_seconds",
            "Time per stage of a triage request (upload, queue, read, select, resample, "
            "inference, postprocess, total).",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.study_slices = Histogram(
            "headct_study_slices",
            "Slices of the selected series per study.",
            buckets=_SLICE_BUCKETS,
            registry=r,
        )
        self.triage_priority = Counter(
            "headct_triage_priority_total",
            "Triaged studies by priority.",
            ["priority"],
            registry=r,
        )
        self.finding_positive = Counter(
            "headct_finding_positive_total",
            "Positive findings by code.",
            ["finding"],
            registry=r,
        )
        self.expert_weight = Histogram(
            "headct_expert_weight",
            "Study-mean router weight per expert: compare with headct_expert_reference_weight "
            "to watch routing drift.",
            ["expert"],
            buckets=_WEIGHT_BUCKETS,
            registry=r,
        )
        self.expert_reference = Gauge(
            "headct_expert_reference_weight",
            "The model card's mean router weight per expert on its validation set.",
            ["expert"],
            registry=r,
        )
        self.inflight = Gauge(
            "headct_inflight_requests",
            "Triage requests admitted and not yet answered.",
            registry=r,
        )
        self.rejections = Counter(
            "headct_rejections_total",
            "Refused triage requests by error code.",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "headct_model_info",
            "The model being served (value 1).",
            ["name", "version", "backbone", "adapter", "backend"],
            registry=r,
        )

    def describe_model(self, card: ModelCard, backend: str) -> None:
        self.model_info.clear()
        self.model_info.labels(
            name=card.name,
            version=str(card.version),
            backbone=card.backbone.name,
            adapter=card.adapter.kind,
            backend=backend,
        ).set(1)
        for expert, weight in enumerate(card.router_reference):
            self.expert_reference.labels(expert=str(expert)).set(weight)
        for finding in card.findings:  # zero series exist from the start, so rates are defined
            self.finding_positive.labels(finding=finding.code)

    def observe_result(self, result: TriageResult) -> None:
        for stage, ms in result.timing_ms.model_dump().items():
            self.stage_duration.labels(stage=stage).observe(ms / 1e3)
        self.study_slices.observe(result.slices.source_count)
        self.triage_priority.labels(priority=result.triage.priority.value).inc()
        for finding in result.findings:
            if finding.positive:
                self.finding_positive.labels(finding=finding.code).inc()
        for expert, weight in enumerate(result.router.study_weights):
            self.expert_weight.labels(expert=str(expert)).observe(weight)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
