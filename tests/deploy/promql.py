"""The metric selectors of a PromQL expression: which series names it reads, with which label
matchers. A small lexer, not a full parser: enough to find every metric name that the rules, the
dashboard and the autoscaler read, so a test can hold them against what the servers export.
(``promtool check rules`` checks the syntax; this only needs the names.)"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
# Followed by a parenthesised list of label names, not of expressions.
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"bool", "and", "or", "unless", "offset", "inf", "nan", "atan2"})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>@,(){}\[\]])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


@dataclass
class Selector:
    """One vector selector: ``name{label op "value", ...}``."""

    name: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)

    def equal_values(self, label: str) -> list[str]:
        return [v for lbl, op, v in self.matchers if lbl == label and op == "="]


def tokenize(expr: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(
                f"cannot read PromQL at {expr[position : position + 20]!r} in {expr!r}"
            )
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, match.group()))
        position = match.end()
    return tokens


def _closing(tokens: list[Token], start: int, opening: str, closing: str) -> int:
    """Index of the token closing the bracket at ``start``."""
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i].text == opening:
            depth += 1
        elif tokens[i].text == closing:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {opening!r}")


def _unquote(text: str) -> str:
    body = text[1:-1]
    return body if text[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def _matchers(tokens: list[Token], start: int, stop: int) -> list[tuple[str, str, str]]:
    """``label op "value"`` triples between the braces at ``start`` and ``stop``."""
    inner = [t for t in tokens[start + 1 : stop] if t.text != ","]
    if len(inner) % 3:
        raise ValueError(f"cannot read label matchers {' '.join(t.text for t in inner)!r}")
    return [
        (inner[i].text, inner[i + 1].text, _unquote(inner[i + 2].text))
        for i in range(0, len(inner), 3)
    ]


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in ``expr``, in order."""
    tokens = tokenize(expr)
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1].text if i + 1 < len(tokens) else ""
        if token.text == "[":  # range or subquery: durations and variables only
            i = _closing(tokens, i, "[", "]") + 1
            continue
        if token.kind == "ident" and token.text in LABEL_LISTS:
            i = _closing(tokens, i + 1, "(", ")") + 1 if following == "(" else i + 1
            continue
        if token.kind == "ident" and (
            token.text in AGGREGATIONS or token.text.lower() in KEYWORDS or following == "("
        ):
            i += 1
            continue
        if token.kind == "ident":
            selector = Selector(token.text)
            i += 1
            if following == "{":
                stop = _closing(tokens, i, "{", "}")
                selector.matchers = _matchers(tokens, i, stop)
                i = stop + 1
            found.append(selector)
            continue
        if token.text == "{":  # {__name__="..."} without a name in front
            stop = _closing(tokens, i, "{", "}")
            matchers = _matchers(tokens, i, stop)
            names = [v for lbl, op, v in matchers if lbl == "__name__" and op == "="]
            found.append(Selector(names[0] if names else "", matchers))
            i = stop + 1
            continue
        i += 1
    return found


def metric_names(expr: str) -> set[str]:
    return {s.name for s in selectors(expr)}
