"""``headct batch``: score an archive (``headct batch SOURCE... --out RESULTS``) and merge shards
(``headct batch merge SHARDS... --out MERGED``). ``service.cli`` registers it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from service.batch.sources import DICOMWEB_PREFIX, Shard
from service.cli_options import BackendOption, ModelRepositoryOption, TritonUrlOption

SCORE = "score"


class _ScoreUnlessNamed(TyperGroup):
    """``headct batch SOURCE ...`` runs ``score``; ``headct batch merge ...`` runs ``merge``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [SCORE, *args]
        return super().parse_args(ctx, args)


batch_app = typer.Typer(
    cls=_ScoreUnlessNamed,
    help="Score an archive of studies, resumably, into Parquet and CSV (SOURCE... --out RESULTS), "
    "or merge the results of shards (merge SHARDS... --out MERGED).",
    no_args_is_help=True,
    add_completion=False,
)


def _shard(text: str | None) -> Shard:
    try:
        return Shard.parse(text) if text else Shard()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shard") from None


@batch_app.command(SCORE)
def score(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Study folders (any depth, studies mixed), zips, or one DICOMweb server as "
            f"{DICOMWEB_PREFIX}URL (QIDO-RS lists its CT studies, WADO-RS fetches them)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Results folder; run again with it to resume.")],
    workers: Annotated[int, typer.Option(min=1, help="Worker processes reading studies.")] = 2,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="Studies per inference call (Triton: its max_batch_size). The embedded CPU "
            "backend runs one study per call in each worker instead: batching does not pay there.",
        ),
    ] = 4,
    shard: Annotated[
        str | None,
        typer.Option(help="INDEX/COUNT: score only the studies whose UID hashes to INDEX."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="labels.csv (headct synth's format): also write evaluation.md/json."),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option(help="Score again the studies an earlier run recorded as failed.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    backend: BackendOption = None,
    model_repository: ModelRepositoryOption = None,
    triton_url: TritonUrlOption = None,
    model_name: Annotated[
        str | None, typer.Option(help="The model to run; default HEADCT_MODEL_NAME.")
    ] = None,
) -> None:
    """Score every study of SOURCE not scored yet into --out: one row per study (results.parquet,
    results.csv), summary.json, and with --labels evaluation.md/json. Exits 0 when every study
    has a row (failed ones included), 1 when the backend failed, 130 when interrupted; run again
    with the same --out to continue."""
    from service.backends import create_backend
    from service.batch.results import ResultsFolder, ResultsFolderError
    from service.batch.runner import BatchAbortedError, BatchRunner, embedded_worker_settings
    from service.batch.summary import finish
    from service.cli import _settings
    from service.errors import HeadCTError
    from service.pipeline import TriagePipeline

    chosen = _shard(shard)
    paths, url = _split_sources(sources)
    settings = _settings(
        backend=backend,
        model_repository=model_repository,
        triton_url=triton_url,
        model_name=model_name,
    )
    try:
        model = create_backend(settings)
        model.card  # noqa: B018 (Triton: fetched now, so a wrong model fails before the scan)
    except HeadCTError as exc:
        sys.stderr.write(f"cannot load the model: {exc.message}\n")
        raise typer.Exit(code=1) from None
    folder = ResultsFolder(out)
    runner = BatchRunner(
        TriagePipeline(model),
        folder,
        workers=workers,
        batch_size=batch_size,
        shard=chosen,
        retry_failed=retry_failed,
        ingest_timeout_s=settings.ingest_timeout_s,
        worker_settings=embedded_worker_settings(settings, model, workers),
    )
    bar = _Progress(enabled=progress)
    try:
        with bar:
            rows = runner.run(paths, url, on_total=bar.total, on_advance=bar.advance)
    except ResultsFolderError as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(code=2) from None
    except BatchAbortedError as exc:
        sys.stderr.write(
            f"stopped: {exc}; {runner.stats.scored} studies were scored and journaled. Run the "
            "same command again to continue.\n"
        )
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        sys.stderr.write(
            f"interrupted: {runner.stats.scored} studies were scored and journaled in {out}. "
            "Run the same command again to continue.\n"
        )
        raise typer.Exit(code=130) from None
    finally:
        model.close()
    summary = finish(
        folder,
        rows,
        runner.card,
        shard=str(chosen),
        run=runner.stats.to_dict(workers, batch_size),
        labels=labels,
    )
    _print_summary(summary)


def _split_sources(sources: list[str]) -> tuple[list[Path], str | None]:
    urls = [s[len(DICOMWEB_PREFIX) :] for s in sources if s.startswith(DICOMWEB_PREFIX)]
    if urls and len(sources) > 1:
        raise typer.BadParameter("a DICOMweb source is scored alone", param_hint="SOURCE")
    paths = [Path(s) for s in sources if not s.startswith(DICOMWEB_PREFIX)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise typer.BadParameter(f"{', '.join(missing)} does not exist", param_hint="SOURCE")
    return paths, (urls[0] if urls else None)


@batch_app.command()
def merge(
    shards: Annotated[
        list[Path],
        typer.Argument(help="Shard results folders, or a folder holding them (one level down)."),
    ],
    out: Annotated[Path, typer.Option(help="Folder for the merged results.")],
    expect: Annotated[
        int | None,
        typer.Option(
            min=1, help="Shards there must be (their COUNT); wait for them with --wait-s."
        ),
    ] = None,
    wait_s: Annotated[
        float, typer.Option(min=0, help="How long to wait for --expect finished shards.")
    ] = 0.0,
    labels: Annotated[
        Path | None, typer.Option(help="labels.csv: also write evaluation.md/json for all.")
    ] = None,
) -> None:
    """Combine finished shards (the same model, disjoint studies) into one results folder. Exits
    2 when a shard is unfinished or missing, or the shards disagree."""
    from service.batch.merge import MergeError, merge_shards

    try:
        summary = merge_shards(shards, out, expect=expect, wait_s=wait_s, labels=labels)
    except MergeError as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(code=2) from None
    _print_summary(summary)


class _Progress:
    """A rich progress bar on stderr: studies done, rate, time left."""

    def __init__(self, *, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._progress.add_task("scoring", total=None, rate="")

    def __enter__(self) -> _Progress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def total(self, studies: int) -> None:
        self._progress.update(self._task, total=studies)

    def advance(self, studies: int) -> None:
        self._progress.advance(self._task, studies)
        speed = self._progress.tasks[0].speed
        rate = f"{speed:.2f} studies/s" if speed else ""
        self._progress.update(self._task, rate=rate)


def _print_summary(summary: dict[str, Any]) -> None:
    """The summary on stdout, for a person (summary.json has all of it)."""
    from service.batch.summary import describe

    sys.stdout.write(describe(summary))
