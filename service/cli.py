"""The ``headct`` command line. The serving commands (``inspect``, ``serve``, ``listen``,
``triage``, and ``batch`` from ``service.batch.cli``) live here; ``main``, the console script, adds
the training commands (``training.cli``) when the training package is importable, so a
gateway-only install (the gateway image has no ``training/``) still has a complete ``headct``.
Heavy imports (onnxruntime, uvicorn, httpx2, pynetdicom) happen inside the commands that need
them."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from service.batch.cli import batch_app
from service.cli_options import BackendOption, ModelRepositoryOption, TritonUrlOption
from service.errors import IngestError
from service.ingest import ingest_study
from service.preprocess import ModelGrid
from service.series import SelectionRules

if TYPE_CHECKING:
    from service.backends import InferenceBackend

app = typer.Typer(
    name="headct",
    help="Head CT triage with a Mixture of Low-Rank Experts. The bundled demo model is trained "
    "on synthetic phantoms and is not for clinical use.",
    no_args_is_help=True,
    add_completion=False,
)

app.add_typer(batch_app, name="batch")

NO_TRAINING_COMMANDS = (
    "This install has the serving commands only. The training commands (synth, train, evaluate, "
    "export, ...) come with the training package, which the gateway image leaves out: install "
    "headct-triage from a source checkout with its train extra, pip install -e '.[train]'."
)


def add_training_commands() -> bool:
    """Register the training commands on ``app`` (importing ``training.cli`` does); False when
    the training package is not installed. By name: ``service`` does not depend on ``training``."""
    try:
        importlib.import_module("training.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "training":
            raise
        return False
    return True


def main() -> None:
    """The ``headct`` console script."""
    if not add_training_commands():
        from rich.markup import escape  # typer renders help as rich markup: keep "[train]"

        app.info.epilog = escape(NO_TRAINING_COMMANDS)
    app()


def _print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


@app.command()
def inspect(
    paths: Annotated[
        list[Path], typer.Argument(help="A study folder, DICOM files, or a zip of a study.")
    ],
    depth: Annotated[
        int | None, typer.Option(help="Slices of the model grid; default: the model card's.")
    ] = None,
    height: Annotated[
        int | None, typer.Option(help="Rows of the model grid; default: the model card's.")
    ] = None,
    width: Annotated[
        int | None, typer.Option(help="Columns of the model grid; default: the model card's.")
    ] = None,
    fov_mm: Annotated[
        float | None,
        typer.Option(help="In-plane field of view; default: the model card's, else the image's."),
    ] = None,
    model_repository: Annotated[
        Path | None,
        typer.Option(help="Whose model card gives the grid; default HEADCT_MODEL_REPOSITORY."),
    ] = None,
    min_slices: Annotated[int, typer.Option(help="Fewest slices a series may have.")] = 16,
    target_thickness_mm: Annotated[float, typer.Option(help="Preferred slice thickness.")] = 5.0,
) -> None:
    """Show the series of a study, the one chosen for triage and why, and the resulting grid.

    The grid is the served model's (its card), each option given replacing its part; with all of
    --depth, --height and --width no model is read. Prints JSON. Exits 2 with the error (its code
    and reasons per series) if the study is not a usable head CT.
    """
    if depth is None or height is None or width is None:
        card_grid = _card_grid(model_repository)
        depth = card_grid.depth if depth is None else depth
        height = card_grid.height if height is None else height
        width = card_grid.width if width is None else width
        fov_mm = card_grid.fov_mm if fov_mm is None else fov_mm
    try:
        grid = ModelGrid(depth=depth, height=height, width=width, fov_mm=fov_mm)
        rules = SelectionRules(min_slices=min_slices, target_thickness_mm=target_thickness_mm)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        result = ingest_study(paths, grid=grid, rules=rules)
    except IngestError as exc:
        _print_json({"error": exc.to_dict()})
        raise typer.Exit(code=2) from None
    _print_json(result.describe())


def _card_grid(model_repository: Path | None) -> ModelGrid:
    """The grid on the card of the model the settings (and ``model_repository``) name."""
    backend = _local_backend(model_repository)
    try:
        return backend.card.grid.to_model_grid()
    finally:
        backend.close()


def _settings(**overrides: Any) -> Any:
    """Settings from the environment with the command's options on top; exits 2 on a bad value."""
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "settings"
            sys.stderr.write(f"invalid setting {field}: {error['msg']}\n")
        raise typer.Exit(code=2) from None


def _local_backend(model_repository: Path | None) -> InferenceBackend:
    """The embedded (onnx) backend over the model the settings name; exits 1 saying why not."""
    from service.backends import create_backend
    from service.errors import HeadCTError

    settings = _settings(model_repository=model_repository, backend="onnx")
    try:
        return create_backend(settings)
    except HeadCTError as exc:
        sys.stderr.write(f"cannot load the model: {exc.message}\n")
        raise typer.Exit(code=1) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8080,
    backend: BackendOption = None,
    model_repository: ModelRepositoryOption = None,
    triton_url: TritonUrlOption = None,
) -> None:
    """Run the gateway (uvicorn). Other settings come from HEADCT_* environment variables."""
    settings = _settings(backend=backend, model_repository=model_repository, triton_url=triton_url)
    import uvicorn

    from service.api.framing import HTTP_PROTOCOL
    from service.app import create_app

    uvicorn.run(
        lambda: create_app(settings),
        factory=True,
        http=HTTP_PROTOCOL,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


@app.command()
def listen(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="DICOM port; default HEADCT_LISTEN_PORT (11112)."),
    ] = None,
    ae_title: Annotated[
        str | None, typer.Option(help="Our AE title; default HEADCT_LISTEN_AE_TITLE (HEADCT).")
    ] = None,
    calling_ae: Annotated[
        list[str] | None,
        typer.Option(
            help="A calling AE title to accept (repeat for several); default "
            "HEADCT_LISTEN_CALLING_AES; none: any."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="The study store's folder; default HEADCT_DATA_DIR.")
    ] = None,
    backend: BackendOption = None,
    model_repository: ModelRepositoryOption = None,
    triton_url: TritonUrlOption = None,
) -> None:
    """Receive studies by DICOM C-STORE into the study store and triage each once it is complete
    (no instance for HEADCT_STUDY_QUIET_S). Other settings come from HEADCT_* variables."""
    settings = _settings(
        listen_port=port,
        listen_ae_title=ae_title,
        listen_calling_aes=tuple(calling_ae) if calling_ae else None,
        data_dir=data_dir,
        backend=backend,
        model_repository=model_repository,
        triton_url=triton_url,
    )
    if settings.data_dir is None:
        sys.stderr.write(
            "headct listen stores what it receives: set HEADCT_DATA_DIR or --data-dir\n"
        )
        raise typer.Exit(code=2)
    from service.errors import HeadCTError
    from service.pacs.listener import run_listener

    try:
        run_listener(settings, host=host)
    except HeadCTError as exc:
        sys.stderr.write(f"cannot start the listener: {exc.message}\n")
        raise typer.Exit(code=1) from None


@app.command()
def triage(
    paths: Annotated[
        list[Path], typer.Argument(help="A study folder, DICOM files, or a zip of a study.")
    ],
    url: Annotated[
        str | None, typer.Option(help="Gateway base URL; without it the study runs in-process.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    api_key: Annotated[
        str | None, typer.Option(envvar="HEADCT_API_KEY", help="API key for the gateway.")
    ] = None,
    model_repository: Annotated[
        Path | None, typer.Option(help="In-process only: the model repository.")
    ] = None,
    timeout_s: Annotated[float, typer.Option(help="HTTP timeout with --url.")] = 120.0,
) -> None:
    """Triage a study: print its findings (positives first), priority and key slice.

    Exits 2 with the problem (its code and reasons) if the study cannot be triaged.
    """
    if url:
        status, payload = _triage_remote(paths, url, api_key, timeout_s)
    else:
        status, payload = _triage_local(paths, model_repository)
    if status != 200:
        _print_json({"error": payload})
        raise typer.Exit(code=2)
    if as_json:
        _print_json(payload)
    else:
        _print_table(payload)


def _print_table(result: dict[str, Any]) -> None:
    """Priority first, then a table of the findings, positives first, each group by probability."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    triage = result["triage"]
    colour = {"critical": "bold red", "urgent": "bold yellow"}.get(triage["priority"], "green")
    model = result["model"]
    drivers = ", ".join(triage["findings"])
    if triage.get("basis") == "study_score":  # no finding of the level is positive
        drivers = f"by the study-level score, most from {drivers}"
    console.print(
        f"[{colour}]Priority: {triage['priority'].upper()}[/{colour}]"
        + (f"  ({drivers})" if triage["findings"] else "")
    )
    slices = result["slices"]
    # The key slice: the slice head's highest score (slices.scores) where the model has one.
    rule = "scored highest for" if slices.get("scores") is not None else "evidence for"
    shown = f", {rule} {slices['key_finding']}" if slices.get("key_finding") else ""
    console.print(
        f"Model {model['name']} v{model['version']}; key slice {slices['key_slice']} of "
        f"{slices['count']} (series slice {slices['key_source_index']} of "
        f"{slices['source_count']}{shown}); {result['timing_ms']['total']:.0f} ms"
    )
    table = Table(show_lines=False)
    for column in ("finding", "category", "probability", "threshold", "positive"):
        table.add_column(
            column, justify="right" if column in ("probability", "threshold") else "left"
        )
    findings = sorted(result["findings"], key=lambda f: (not f["positive"], -f["probability"]))
    for f in findings:
        style = ("bold red" if f["critical"] else "bold") if f["positive"] else "dim"
        table.add_row(
            f["name"],
            f["category"],
            f"{f['probability']:.3f}",
            f"{f['threshold']:.3f}",
            "yes" if f["positive"] else "",
            style=style,
        )
    console.print(table)
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"[dim]{result['disclaimer']}[/dim]")


def _triage_remote(
    paths: list[Path], url: str, api_key: str | None, timeout_s: float
) -> tuple[int, dict[str, Any]]:
    import httpx2

    files = [p for path in paths for p in _study_files(path)]
    if not files:
        raise typer.BadParameter("no files found in the given paths")
    parts = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in files]
    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        response = httpx2.post(
            url.rstrip("/") + "/v1/triage", files=parts, headers=headers, timeout=timeout_s
        )
    except httpx2.HTTPError as exc:
        sys.stderr.write(f"cannot reach the gateway at {url}: {exc}\n")
        raise typer.Exit(code=1) from None
    try:
        payload = response.json()
    except ValueError:
        payload = {"status": response.status_code, "detail": response.text[:500]}
    return response.status_code, payload


def _study_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist")
    return [path]


def _triage_local(paths: list[Path], model_repository: Path | None) -> tuple[int, dict[str, Any]]:
    from service.errors import HeadCTError
    from service.pipeline import TriagePipeline

    backend = _local_backend(model_repository)
    try:
        result = TriagePipeline(backend).run(paths)
    except HeadCTError as exc:
        return 422, exc.to_dict()
    finally:
        backend.close()
    return 200, result.model_dump(mode="json")


if __name__ == "__main__":
    # ``python -m service.cli`` runs this file as ``__main__``: run the importable module's app,
    # the one ``training.cli`` registers its commands on.
    from service.cli import main as _main

    _main()
