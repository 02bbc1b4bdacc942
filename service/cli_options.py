"""Command-line options that several ``headct`` commands share (``serve``, ``listen``,
``batch score``): one declaration each, so their names and help stay the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

BackendOption = Annotated[
    str | None, typer.Option(help="onnx (embedded) or triton; default HEADCT_BACKEND.")
]
ModelRepositoryOption = Annotated[
    Path | None, typer.Option(help="Model repository; default HEADCT_MODEL_REPOSITORY.")
]
TritonUrlOption = Annotated[
    str | None, typer.Option(help="Triton host:port; default HEADCT_TRITON_URL.")
]
