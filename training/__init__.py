"""headct-triage training package: synthetic studies, MoLRE models, training, evaluation, export.

Training needs the ``train`` extra (PyTorch and friends); the gateway install does not have it.
``training.cli`` and the config modules import without it, so that ``headct`` runs on a gateway
install and its training commands say what to install instead of failing on ``import torch``.
"""

TRAIN_EXTRA_INSTALL = "pip install 'headct-triage[train]'"


def require_train_extra(command: str) -> None:
    """Exit with a message naming the ``train`` extra when PyTorch is not installed."""
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise SystemExit(
            f"{command} needs PyTorch, which is not installed here (a gateway install): install "
            f"the train extra with {TRAIN_EXTRA_INSTALL}"
        ) from None
