"""Architecture specs: a small grammar for writing networks as text, never evaluated as Python.

``"Dense(512, w_std=1.5, b_std=0.05) > Relu() > Dense(10)"`` parses into
``serial(Dense(512, w_std=1.5, b_std=0.05), Relu(), Dense(10))``. The grammar::

    pipeline := term (">" term)*
    term     := NAME "(" [arguments] ")" | "(" pipeline ")"
    arguments:= argument ("," argument)* [","]
    argument := [NAME "="] value
    value    := NUMBER | STRING | True | False | None | "[" values "]" | "(" values ")" | pipeline

NAME must be one of the library's layers or the combinators ``serial``, ``parallel`` and
``repeat``; strings are quoted with ' or " and have no escapes. The repr of every layer built from
specs is itself a spec (``parse_spec(repr(net))`` rebuilds ``net``). Errors raise :class:`SpecError`
naming the offending token and its column.
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable

from . import layers as _layers
from .layers.base import Layer
from .architectures import ARCHITECTURES

MAX_LENGTH = 20_000
MAX_DEPTH = 64
MAX_REPEAT = 10_000
_NOT_IN_SPECS = {
    "Elementwise": "it takes a Python function; build it in Python instead",
    "Activation": "it is the abstract base of the activations; use one such as Relu() or Tanh()",
}


class SpecError(ValueError):
    """An invalid architecture spec; ``column`` (1-based) and ``token`` locate the problem."""

    def __init__(self, message: str, text: str, column: int, token: str):
        self.text, self.column, self.token, self.reason = text, column, token, message
        where = f"at column {column} ({token!r})" if token else f"at column {column} (end of spec)"
        super().__init__(f"invalid architecture spec {where}: {message}")

    def pointer(self) -> str:
        """The spec with a caret line under the offending token (for multi-line displays)."""
        width = max(1, len(self.token))
        return f"{self.text}\n{' ' * (self.column - 1)}{'^' * width}"


def constructors() -> dict[str, Callable[..., Layer]]:
    """Every name a spec may call: the public layer classes and the ``serial``/``parallel``/``repeat``
    combinators of :mod:`infinet.layers` (new layers become available by being exported there), and
    the ready-made architectures of :mod:`infinet.architectures` (``myrtle(5)``, ``cntk(8)``, ...)."""
    table: dict[str, Callable[..., Layer]] = {}
    for name in _layers.__all__:
        obj = getattr(_layers, name)
        if name in _NOT_IN_SPECS or name.startswith("_"):
            continue
        if inspect.isclass(obj) and issubclass(obj, Layer) and obj is not Layer:
            table[name] = obj
    table.update(serial=_layers.serial, parallel=_layers.parallel, repeat=_repeat, bidirectional=_layers.bidirectional)
    table.update(ARCHITECTURES)
    return table


def _repeat(layer: Layer, n: int) -> Layer:
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_REPEAT:
        raise ValueError(f"repeat count {n} is larger than the limit {MAX_REPEAT}")
    return _layers.repeat(layer, n)


_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
      | (?P<name>[A-Za-z_][A-Za-z_0-9]*)
      | (?P<string>'[^'\\\n]*'|"[^"\\\n]*")
      | (?P<punct>[()\[\],=>])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Tok:
    kind: str  # number | name | string | punct | end
    text: str
    column: int  # 1-based


def _tokenize(text: str) -> list[_Tok]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # reported when the parser reaches it, so earlier errors come first
            tokens.append(_Tok("bad", text[pos], pos + 1))
            break
        if m.lastgroup != "space":
            tokens.append(_Tok(m.lastgroup, m.group(), pos + 1))
        pos = m.end()
    if not tokens or tokens[-1].kind != "bad":
        tokens.append(_Tok("end", "", len(text) + 1))
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.table = constructors()

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def tok(self) -> _Tok:
        tok = self.tokens[self.i]
        if tok.kind == "bad":
            hint = " (strings may not contain backslashes)" if tok.text in "'\"" else ""
            raise SpecError(f"unexpected character {tok.text!r}{hint}", self.text, tok.column, tok.text)
        return tok

    def error(self, message: str, tok: _Tok | None = None) -> SpecError:
        tok = tok or self.tok
        return SpecError(message, self.text, tok.column, tok.text)

    def expect(self, text: str) -> _Tok:
        tok = self.tok
        if tok.text != text or tok.kind not in ("punct",):
            found = "the end of the spec" if tok.kind == "end" else repr(tok.text)
            raise self.error(f"expected {text!r} but found {found}")
        self.i += 1
        return tok

    def nest(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nesting deeper than {MAX_DEPTH} levels")

    # -- grammar -----------------------------------------------------------------------------------
    def parse(self) -> Layer:
        if not self.text.strip():
            raise SpecError("the spec is empty; write layers such as 'Dense(512) > Relu() > Dense(10)'",
                            self.text, 1, "")
        layer = self.pipeline()
        if self.tok.kind != "end":
            raise self.error("expected '>' between layers or the end of the spec")
        return layer

    def pipeline(self) -> Layer:
        self.nest()
        terms = [self.term()]
        while self.tok.text == ">" and self.tok.kind == "punct":
            self.i += 1
            terms.append(self.term())
        self.depth -= 1
        return terms[0] if len(terms) == 1 else _layers.serial(*terms)

    def term(self) -> Layer:
        tok = self.tok
        if tok.kind == "punct" and tok.text == "(":
            self.i += 1
            layer = self.pipeline()
            self.expect(")")
            return layer
        if tok.kind != "name":
            found = "the end of the spec" if tok.kind == "end" else repr(tok.text)
            raise self.error(f"expected a layer such as Dense(...) or Relu() but found {found}")
        return self.call()

    def call(self) -> Layer:
        name_tok = self.tok
        name = name_tok.text
        if name in _NOT_IN_SPECS:
            raise self.error(f"{name} cannot be written in a spec: {_NOT_IN_SPECS[name]}")
        if name not in self.table:
            close = difflib.get_close_matches(name, self.table, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known layers: {', '.join(sorted(self.table))}"
            raise self.error(f"unknown layer {name!r}{hint}")
        self.i += 1
        if self.tok.text != "(":
            raise self.error(f"{name} must be called, e.g. {name}(...)")
        args, kwargs = self.arguments()
        factory = self.table[name]
        try:
            inspect.signature(factory).bind(*args, **kwargs)
        except TypeError as e:
            raise self.error(f"bad arguments for {name}: {e}", name_tok) from None
        try:
            layer = factory(*args, **kwargs)
        except (TypeError, ValueError) as e:
            message = str(e) if str(e).startswith(name) else f"{name}: {e}"
            raise self.error(message, name_tok) from None
        return layer

    def arguments(self) -> tuple[list, dict]:
        self.expect("(")
        self.nest()
        args, kwargs = [], {}
        while not (self.tok.kind == "punct" and self.tok.text == ")"):
            nxt = self.tokens[min(self.i + 1, len(self.tokens) - 1)]
            if self.tok.kind == "name" and nxt.text == "=":
                key_tok = self.tok
                self.i += 2
                if key_tok.text in kwargs:
                    raise self.error(f"argument {key_tok.text!r} given twice", key_tok)
                kwargs[key_tok.text] = self.value()
            else:
                if kwargs:
                    raise self.error("a positional argument may not follow a keyword argument")
                args.append(self.value())
            if self.tok.kind == "punct" and self.tok.text == ",":
                self.i += 1
            elif not (self.tok.kind == "punct" and self.tok.text == ")"):
                found = "the end of the spec" if self.tok.kind == "end" else repr(self.tok.text)
                raise self.error(f"expected ',' or ')' but found {found}")
        self.i += 1
        self.depth -= 1
        return args, kwargs

    def value(self) -> Any:
        tok = self.tok
        if tok.kind == "number":
            self.i += 1
            return _number(tok.text)
        if tok.kind == "string":
            self.i += 1
            return tok.text[1:-1]
        if tok.kind == "name" and tok.text in ("True", "False", "None"):
            self.i += 1
            return {"True": True, "False": False, "None": None}[tok.text]
        if tok.kind == "punct" and tok.text == "[":
            return self.sequence("[", "]", list)
        if tok.kind == "punct" and tok.text == "(":
            nxt = self.tokens[min(self.i + 1, len(self.tokens) - 1)]
            if nxt.kind == "name" and nxt.text not in ("True", "False", "None"):
                return self.pipeline()
            return self.sequence("(", ")", tuple)
        if tok.kind == "name":
            return self.pipeline()
        found = "the end of the spec" if tok.kind == "end" else repr(tok.text)
        raise self.error(f"expected a value (number, string, True/False/None, list or layer) but found {found}")

    def sequence(self, open_: str, close: str, kind: type):
        self.expect(open_)
        self.nest()
        items = []
        while not (self.tok.kind == "punct" and self.tok.text == close):
            items.append(self.value())
            if self.tok.kind == "punct" and self.tok.text == ",":
                self.i += 1
            elif not (self.tok.kind == "punct" and self.tok.text == close):
                found = "the end of the spec" if self.tok.kind == "end" else repr(self.tok.text)
                raise self.error(f"expected ',' or {close!r} but found {found}")
        self.i += 1
        self.depth -= 1
        return kind(items)


def _number(text: str) -> int | float:
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    return float(text)


def parse_spec(text: str, max_length: int | None = MAX_LENGTH) -> Layer:
    """Parse an architecture spec such as ``"Dense(512, w_std=1.5) > Relu() > Dense(10)"``.

    ``>`` composes in sequence (``serial``); any layer of :mod:`infinet` may be called with its Python
    arguments (numbers, quoted strings, True/False/None, lists and tuples, nested layers), and
    ``serial(...)``, ``parallel(...)`` and ``repeat(layer, n)`` build combinations, e.g. a residual
    block ``FanOut(2) > parallel(Identity(), Relu() > Dense(512)) > FanInSum()``. Nothing is passed to
    Python's ``eval``. Raises :class:`SpecError` (a ``ValueError``) naming the offending token.
    ``max_length`` bounds the text (None: no bound, for specs this library wrote itself); the total
    number of layers is bounded separately (:data:`infinet.layers.combinators.MAX_LAYERS`).
    """
    if not isinstance(text, str):
        raise TypeError(f"an architecture spec is a string, got {type(text).__name__}")
    if max_length is not None and len(text) > max_length:
        raise SpecError(f"the spec is longer than {max_length} characters", text[:40], 1, text[:1])
    return _Parser(text).parse()


def format_spec(layer: Layer) -> str:
    """The spec text of ``layer`` (its repr), which :func:`parse_spec` turns back into the same network."""
    return repr(layer)


def round_trip_spec(layer: Layer) -> str:
    """The spec of ``layer``, checked to rebuild the same network (``repr(parse_spec(spec)) == spec``);
    a ValueError saying why otherwise (for example a user function in ``Elementwise``)."""
    spec = format_spec(layer)
    try:
        again = format_spec(parse_spec(spec, max_length=None))
    except ValueError as e:
        raise ValueError(f"this architecture cannot be written as a spec: {e}") from None
    if again != spec:
        raise ValueError("this architecture's spec does not rebuild it exactly; it cannot be sent as text")
    return spec
