"""Config dataclasses at their two edges: JSON and the command line.

Every config (``MoLREConfig``, ``TrainConfig``, ``PretrainConfig``, ``RunConfig``) is a dataclass
whose fields carry their help text (``field(metadata={"help": ...})``, PEFT's pattern). JSON comes
back through ``config_from_dict``, which refuses unknown keys so that a typo cannot pass silently;
the ``headct`` commands take their options, defaults and help from the fields through
``cli_options`` and ``config_options`` instead of declaring them a second time.

Torch-free: ``training.cli`` imports this on a gateway install.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, fields
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

T = TypeVar("T")
Command = TypeVar("Command", bound=Callable[..., Any])


def config_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """``cls(**data)``; a key that is not one of ``cls``'s fields is an error naming it."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}")
    return cls(**data)


def cli_options(
    config: type,
    names: Iterable[str] | None = None,
    *,
    skip: Iterable[str] = (),
    rename: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> list[inspect.Parameter]:
    """Typer options for fields of a config dataclass (``names``, default all but ``skip``):
    each field's type, its default (or the one in ``defaults``; none makes the option required)
    and its help text. ``rename`` gives an option another name than its field."""
    hints = get_type_hints(config)
    by_name = {f.name: f for f in fields(config)}
    chosen = [n for n in by_name if n not in set(skip)] if names is None else list(names)
    parameters = []
    for name in chosen:
        spec = by_name[name]
        if "help" not in spec.metadata:
            raise ValueError(f"{config.__name__}.{name} has no help text to show as an option")
        default = (defaults or {}).get(name, spec.default)
        if default is MISSING and spec.default_factory is not MISSING:
            default = spec.default_factory()
        parameters.append(
            inspect.Parameter(
                (rename or {}).get(name, name),
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if default is MISSING else default,
                annotation=Annotated[hints[name], typer.Option(help=spec.metadata["help"])],
            )
        )
    return parameters


def config_options(*options: inspect.Parameter) -> Callable[[Command], Command]:
    """Give a command that takes ``**options`` these options (before its own) for typer to read;
    typer then calls it with every option as a keyword."""

    def decorate(command: Command) -> Command:
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        command.__signature__ = inspect.Signature([*options, *own])  # type: ignore[attr-defined]
        return command

    return decorate
