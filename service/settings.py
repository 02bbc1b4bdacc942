"""Gateway settings, read from the environment (prefix ``HEADCT_``) and validated at start-up.

Every field names its environment variable in its error, so a bad deployment fails with a sentence
that says what to fix. Nothing here is built at import time: ``create_app`` reads ``Settings()``
inside its factory.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.pacs.destination import (
    DEFAULT_CALLING_AET,
    Destination,
    check_ae_title,
    parse_destination,
)

# The demo model's repository in a source checkout (and an editable install of one). An installed
# wheel does not ship it: there ``HEADCT_MODEL_REPOSITORY`` must name a model repository.
DEFAULT_MODEL_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
MIB = 1024 * 1024


class BackendKind(StrEnum):
    ONNX = "onnx"
    TRITON = "triton"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class Settings(BaseSettings):
    """How the gateway runs. Each field is ``HEADCT_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="HEADCT_", extra="ignore", frozen=True, validate_default=True
    )

    backend: BackendKind = Field(
        BackendKind.ONNX,
        description="onnx: embedded onnxruntime; triton: a Triton Inference Server at triton_url.",
    )
    model_repository: Path = Field(
        DEFAULT_MODEL_REPOSITORY,
        description="Triton-layout repository: <name>/<version>/model.onnx and model_card.json. "
        "Unset: a source checkout's model_repository/ (the demo model); a wheel ships none.",
    )
    model_name: str = Field("headct_molre", min_length=1, description="Model folder / Triton name.")
    model_version: int | None = Field(
        None, ge=1, description="Version folder to load; unset: the newest numeric version."
    )
    onnx_intra_op_threads: int = Field(0, ge=0, description="0: onnxruntime's default.")
    onnx_inter_op_threads: int = Field(0, ge=0, description="0: onnxruntime's default.")
    onnx_spinning: bool = Field(
        True,
        description="Let onnxruntime's idle threads spin (lowest latency); off leaves the CPU to "
        "other work between calls (batch scoring sets it off for its decode workers).",
    )
    triton_url: str = Field("localhost:8000", description="host:port of Triton's HTTP endpoint.")

    max_upload_bytes: int = Field(1024 * MIB, ge=1, description="Largest request body.")
    max_files: int = Field(2000, ge=1, description="Most files per study (zip entries included).")
    max_zip_uncompressed_bytes: int = Field(
        2048 * MIB, ge=1, description="Largest total uncompressed size of the zips' entries."
    )
    max_zip_ratio: float = Field(
        200.0, gt=1.0, description="Largest uncompressed/compressed ratio of a zip entry."
    )
    max_concurrent_jobs: int = Field(
        2, ge=1, description="Studies decoded, preprocessed and inferred at once (worker threads)."
    )
    max_queued_jobs: int = Field(
        8, ge=0, description="Studies admitted beyond those running; more are refused with 429."
    )
    inference_timeout_s: float = Field(30.0, gt=0, description="Backend deadline per study.")
    ingest_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Deadline for reading one study (decode, select, resample) once it has a "
        "worker; past it the work stops and the answer is 422 ingest_timeout.",
    )
    upload_timeout_s: float = Field(
        120.0, gt=0, description="Deadline for receiving a whole upload (408 past it)."
    )
    upload_min_rate_bytes_s: int = Field(
        32 * 1024,
        ge=0,
        description="Slowest average upload rate accepted after upload_rate_grace_s (408 below "
        "it); 0: no minimum.",
    )
    upload_rate_grace_s: float = Field(
        5.0, ge=0, description="Seconds an upload may take before its rate is checked."
    )
    max_uploads_per_client: int = Field(
        8,
        ge=1,
        description="Uploads one client address may have in progress at once; more get 429. "
        "Behind a proxy, the address comes from X-Forwarded-For when the proxy is trusted.",
    )
    upload_dir: Path | None = Field(
        None, description="Where uploads are spooled; unset: the system temporary folder."
    )
    spool_memory_bytes: int = Field(
        8 * MIB,
        ge=0,
        description="Per request, upload bytes kept in memory before spooling to upload_dir.",
    )
    viewer_cache_studies: int = Field(
        16,
        ge=0,
        description="Studies whose model-grid volumes the gateway keeps in memory for the "
        "viewer's slice images (the least recently used leave first; about 1 MiB each on the "
        "demo model's 32x128x128 grid; gone on restart); 0: none, the viewer shows no slices.",
    )
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Comma-separated keys accepted on /v1/*; empty: no authentication."
    )
    data_dir: Path | None = Field(
        None,
        description="Folder of the study store (received instances, and its SQLite database "
        "unless store_url names another). Set: the gateway accepts STOW-RS on /dicomweb, answers "
        "/v1/studies and triages stored studies; headct listen needs it. Made if missing.",
    )
    store_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the study store's database; unset: "
        "sqlite:///<data_dir>/store.sqlite3. Several replicas share one PostgreSQL "
        "(postgresql+psycopg://user:password@host/db) and one data_dir volume.",
    )
    study_quiet_s: float = Field(
        10.0,
        gt=0,
        description="A study is complete (and triaged) once no instance of it has arrived for "
        "this long; POST /v1/studies/{uid}/complete says so at once.",
    )
    study_lease_s: float = Field(
        120.0,
        gt=0,
        description="How long a worker holds a study it triages; a worker that dies leaves it "
        "to another after this. Longer than ingest_timeout_s + inference_timeout_s.",
    )
    study_attempts: int = Field(
        3, ge=1, description="Triage attempts per study whose worker died before it is failed."
    )
    worker_poll_s: float = Field(
        1.0, gt=0, description="How often an idle worker looks for complete studies."
    )
    listen_ae_title: str = Field(
        "HEADCT", description="headct listen's AE title (1 to 16 characters, no backslash)."
    )
    listen_port: int = Field(11112, ge=1, le=65535, description="headct listen's DICOM port.")
    listen_calling_aes: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated calling AE titles headct listen accepts (others are "
        "rejected at association); empty: any.",
    )
    listen_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of headct listen's Prometheus /metrics; unset: none.",
    )
    log_level: LogLevel = LogLevel.INFO
    log_json: bool = Field(True, description="JSON lines on stderr; false: plain text.")

    # ---- PACS delivery: where the SR and key image go, and how failures are retried
    # (service/pacs/delivery.py) ----
    pacs_destinations: Annotated[tuple[Destination, ...], NoDecode] = Field(
        (),
        description="Comma-separated destinations for each triaged study's SR and key image: "
        "dicomweb:http://host:port/dicom-web (STOW-RS) or dimse:AET@host:port (C-STORE); "
        "empty: results are not sent.",
    )
    pacs_calling_aet: str = Field(
        DEFAULT_CALLING_AET, description="Our AE title when storing to a DIMSE destination."
    )
    pacs_delivery_timeout_s: float = Field(
        30.0, gt=0, description="Deadline of each network step of one delivery attempt."
    )
    pacs_retry_max_attempts: int = Field(
        8, ge=1, description="Attempts per destination before a delivery is dead-lettered."
    )
    pacs_retry_base_s: float = Field(
        5.0, gt=0, description="Wait after the first failed attempt (before jitter)."
    )
    pacs_retry_factor: float = Field(
        2.0, ge=1, description="Each further failed attempt multiplies the wait by this."
    )
    pacs_retry_cap_s: float = Field(600.0, gt=0, description="Longest wait between attempts.")
    # ---- end of PACS delivery ----

    @field_validator("api_keys", "listen_calling_aes", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("pacs_destinations", mode="before")
    @classmethod
    def _parse_destinations(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return tuple(parse_destination(d) for d in value.split(",") if d.strip())
            except ValueError as exc:
                raise ValueError(f"HEADCT_PACS_DESTINATIONS: {exc}") from None
        return value

    @field_validator("pacs_calling_aet", "listen_ae_title", "listen_calling_aes")
    @classmethod
    def _check_ae_titles(cls, value: str | tuple[str, ...], info: ValidationInfo) -> object:
        what = f"HEADCT_{info.field_name.upper()}" if info.field_name else "AE title"
        for title in (value,) if isinstance(value, str) else value:
            check_ae_title(title, what)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("triton_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        bare = value.split("://", 1)[-1]
        if not bare or "/" in bare.rstrip("/"):
            raise ValueError(
                f"HEADCT_TRITON_URL must be host:port (optionally with http://), got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _check_paths(self) -> Settings:
        if self.backend is BackendKind.ONNX and not self.model_repository.is_dir():
            if "model_repository" not in self.model_fields_set:
                raise ValueError(
                    "HEADCT_MODEL_REPOSITORY is not set and this is not a source checkout (an "
                    "installed package ships no model): set HEADCT_MODEL_REPOSITORY (or "
                    "--model-repository) to a model repository holding "
                    "<model_name>/<version>/model.onnx"
                )
            raise ValueError(
                f"HEADCT_MODEL_REPOSITORY {str(self.model_repository)!r} is not a folder; point it "
                "at a model repository holding <model_name>/<version>/model.onnx"
            )
        if self.pacs_retry_cap_s < self.pacs_retry_base_s:
            raise ValueError(
                f"HEADCT_PACS_RETRY_CAP_S ({self.pacs_retry_cap_s}) is below "
                f"HEADCT_PACS_RETRY_BASE_S ({self.pacs_retry_base_s})"
            )
        if self.upload_dir is not None and not self.upload_dir.is_dir():
            raise ValueError(f"HEADCT_UPLOAD_DIR {str(self.upload_dir)!r} is not a folder")
        if self.data_dir is not None and self.data_dir.exists() and not self.data_dir.is_dir():
            raise ValueError(f"HEADCT_DATA_DIR {str(self.data_dir)!r} is not a folder")
        if self.store_url is not None and self.data_dir is None:
            raise ValueError(
                "HEADCT_STORE_URL is set without HEADCT_DATA_DIR: the store keeps its instance "
                "files in the data folder; set HEADCT_DATA_DIR too"
            )
        if (
            self.data_dir is not None
            and self.study_lease_s <= self.ingest_timeout_s + self.inference_timeout_s
        ):
            raise ValueError(
                f"HEADCT_STUDY_LEASE_S ({self.study_lease_s:g}) must be longer than "
                "HEADCT_INGEST_TIMEOUT_S + HEADCT_INFERENCE_TIMEOUT_S "
                f"({self.ingest_timeout_s + self.inference_timeout_s:g}), or a study still being "
                "triaged could be taken by a second worker"
            )
        return self

    @property
    def store_enabled(self) -> bool:
        """The study store (STOW-RS, /v1/studies, the worker) is on."""
        return self.data_dir is not None

    def database_url(self) -> str:
        """The study store's database: ``store_url``, or SQLite in the data folder."""
        assert self.data_dir is not None, "the study store needs HEADCT_DATA_DIR"
        return self.store_url or f"sqlite:///{self.data_dir.resolve() / 'store.sqlite3'}"

    def model_folder(self) -> Path:
        return self.model_repository / self.model_name
