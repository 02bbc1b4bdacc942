"""``inject_molre``: swap MoLRE expert layers into a backbone by module name, freeze the rest.

Target names differ between backbone families (DINOv2 ``attention.q_proj``, SigLIP
``self_attn.q_proj``, DINOv3 ``model.layer.N...``), so a config names *roles* (``q``,
``patch_embedding``...) and the backbone registry maps each role to a regular expression for its
family. A target that is not a role is itself a regular expression, as in PEFT.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import nn

from training.molre.config import TARGET_ROLES, MoLREConfig
from training.molre.layer import MoLRELinear, MoLREPatchConv

_ADAPTABLE = (nn.Linear, nn.Conv2d)


def resolve_targets(
    config: MoLREConfig,
    role_patterns: Mapping[str, str],
    default_targets: tuple[str, ...] | None = None,
) -> list[str]:
    """The regular expressions for ``config.target_modules`` (or ``default_targets`` when it is
    None): roles become their family's pattern, anything else is used as given."""
    targets = config.target_modules if config.target_modules is not None else default_targets
    if not targets:
        raise ValueError(
            "MoLREConfig.target_modules is None and this module has no default targets: "
            "name the modules to adapt in target_modules"
        )
    missing_roles = [t for t in targets if t in TARGET_ROLES and t not in role_patterns]
    if role_patterns and missing_roles:
        raise ValueError(
            f"target role(s) {missing_roles} are not defined for this backbone family, which has "
            f"{sorted(role_patterns)}; fix MoLREConfig.target_modules"
        )
    return [role_patterns.get(target, target) for target in targets]


def expert_layers(module: nn.Module) -> list[tuple[str, MoLRELinear | MoLREPatchConv]]:
    """The MoLRE layers inside ``module`` with their names, in module order (the order of the
    layer axis of the model's gates)."""
    return [
        (name, sub)
        for name, sub in module.named_modules()
        if isinstance(sub, MoLRELinear | MoLREPatchConv)
    ]


def inject_molre(
    module: nn.Module,
    config: MoLREConfig,
    *,
    role_patterns: Mapping[str, str] | None = None,
    default_targets: tuple[str, ...] | None = None,
) -> list[str]:
    """Wrap every ``nn.Linear``/patch ``nn.Conv2d`` of ``module`` whose name matches a target, in
    place; freeze all other parameters. Returns the wrapped module names.

    ``role_patterns`` and ``default_targets`` default to the module's own ``target_patterns`` and
    ``default_targets`` attributes (a ``SliceBackbone`` has both). A pattern matches a module name
    or a dotted suffix of it, so it does not depend on where the backbone sits in a model.
    """
    if expert_layers(module):
        raise ValueError("module already holds MoLRE layers; inject into a fresh backbone")
    if role_patterns is None:
        role_patterns = getattr(module, "target_patterns", {})
    if default_targets is None:
        default_targets = getattr(module, "default_targets", None)
    patterns = resolve_targets(config, role_patterns, default_targets)
    compiled = [re.compile(rf"(?:.+\.)?(?:{pattern})") for pattern in patterns]

    matches: dict[str, nn.Module] = {}
    unmatched = []
    for pattern, regex in zip(patterns, compiled, strict=True):
        found = {n: m for n, m in module.named_modules() if n and regex.fullmatch(n)}
        if not found:
            unmatched.append(pattern)
        matches.update(found)
    if unmatched:
        linear_names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)][:8]
        raise ValueError(
            f"MoLRE target pattern(s) {unmatched} match no module; some linear layers here: "
            f"{linear_names}. Fix target_modules (roles: {sorted(role_patterns)})"
        )

    wrong = {n: type(m).__name__ for n, m in matches.items() if not isinstance(m, _ADAPTABLE)}
    if wrong:
        raise ValueError(
            f"MoLRE targets {wrong} are not nn.Linear or a patch-embedding nn.Conv2d; "
            "narrow target_modules"
        )

    for parameter in module.parameters():
        parameter.requires_grad_(False)
    for name, target in matches.items():
        layer = (
            MoLRELinear(target, config)
            if isinstance(target, nn.Linear)
            else MoLREPatchConv(target, config)
        )
        layer.to(device=target.weight.device, dtype=target.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name), child, layer)
    return [name for name, _ in expert_layers(module)]
