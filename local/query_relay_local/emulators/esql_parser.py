"""Parser for the ES|QL subset the emulator runs: query text (+ request params) -> syntax tree.

Supported: `FROM idx[, idx...]` or `ROW a = 1, ...` then `| WHERE`, `| EVAL`, `| STATS ... BY ...`,
`| SORT`, `| KEEP`, `| DROP`, `| RENAME`, `| LIMIT`. Expressions: literals (numbers, "strings",
\"\"\"raw strings\"\"\", true/false/null, time spans like `1 day`), `?`, `?1` and `?name`
parameters, fields (`a.b`, `@timestamp`, backquoted), function calls, arithmetic, comparisons,
AND/OR/NOT, IS [NOT] NULL, [NOT] LIKE, [NOT] IN. `//` and `/* */` comments are skipped.

Syntax errors are `ParsingError`s worded like ES's (`line 1:15: mismatched input ...`), with
1-based line and column numbers.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .esql_types import BOOLEAN, DOUBLE, INT_MAX, INT_MIN, INTEGER, KEYWORD, LONG, NULL, ParsingError, Value

Pos = tuple[int, int]  # (line, column), both 1-based


# --- syntax tree -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expr:
    pos: Pos
    text: str  # the source text: names unaliased EVAL/STATS columns, like ES does


@dataclass(frozen=True, slots=True)
class Literal(Expr):
    value: Value
    type: str


@dataclass(frozen=True, slots=True)
class TimeSpan(Expr):
    amount: int
    unit: str  # one of TIME_UNITS' values


@dataclass(frozen=True, slots=True)
class FieldRef(Expr):
    name: str


@dataclass(frozen=True, slots=True)
class Star(Expr):
    """The `*` of COUNT(*)."""


@dataclass(frozen=True, slots=True)
class Unary(Expr):
    op: str  # "-" or "NOT"
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary(Expr):
    op: str  # + - * / % == != < <= > >= AND OR
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class IsNull(Expr):
    operand: Expr
    negated: bool


@dataclass(frozen=True, slots=True)
class Like(Expr):
    operand: Expr
    pattern: str
    negated: bool


@dataclass(frozen=True, slots=True)
class InList(Expr):
    operand: Expr
    items: tuple[Expr, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class Call(Expr):
    name: str  # upper case
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Alias:
    name: str
    expr: Expr


@dataclass(frozen=True, slots=True)
class NamePattern:
    text: str  # a column name, `*` wildcards allowed where the command takes patterns
    pos: Pos


@dataclass(frozen=True, slots=True)
class From:
    sources: tuple[NamePattern, ...]


@dataclass(frozen=True, slots=True)
class RowSource:
    fields: tuple[Alias, ...]


@dataclass(frozen=True, slots=True)
class Where:
    condition: Expr


@dataclass(frozen=True, slots=True)
class Eval:
    fields: tuple[Alias, ...]


@dataclass(frozen=True, slots=True)
class Stats:
    aggregates: tuple[Alias, ...]
    groups: tuple[Alias, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class SortKey:
    expr: Expr
    descending: bool
    nulls_first: bool


@dataclass(frozen=True, slots=True)
class Sort:
    keys: tuple[SortKey, ...]


@dataclass(frozen=True, slots=True)
class Keep:
    patterns: tuple[NamePattern, ...]


@dataclass(frozen=True, slots=True)
class Drop:
    patterns: tuple[NamePattern, ...]


@dataclass(frozen=True, slots=True)
class Rename:
    pairs: tuple[tuple[NamePattern, str], ...]  # (old, new)


@dataclass(frozen=True, slots=True)
class Limit:
    count: int


Command = Where | Eval | Stats | Sort | Keep | Drop | Rename | Limit


@dataclass(frozen=True, slots=True)
class Query:
    source: From | RowSource
    commands: tuple[Command, ...]


# --- tokens ----------------------------------------------------------------------------------

TIME_UNITS: Final = {
    **dict.fromkeys(("millisecond", "milliseconds", "ms"), "ms"),
    **dict.fromkeys(("second", "seconds", "sec", "s"), "s"),
    **dict.fromkeys(("minute", "minutes", "min"), "m"),
    **dict.fromkeys(("hour", "hours", "h"), "h"),
    **dict.fromkeys(("day", "days", "d"), "d"),
    **dict.fromkeys(("week", "weeks", "w"), "w"),
    **dict.fromkeys(("month", "months", "mo"), "mo"),
    **dict.fromkeys(("quarter", "quarters", "q"), "q"),
    **dict.fromkeys(("year", "years", "yr", "y"), "y"),
}
_RESERVED: Final = frozenset(
    {"AND", "OR", "NOT", "IS", "NULL", "LIKE", "RLIKE", "IN", "AS", "BY", "ASC", "DESC", "NULLS", "FIRST"}
    | {"LAST", "TRUE", "FALSE"}
)
_SOURCE_COMMANDS: Final = "{'from', 'row'}"
_PROCESSING_COMMANDS: Final = "{'drop', 'eval', 'keep', 'limit', 'rename', 'sort', 'stats', 'where'}"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # ident, qident, int, decimal, string, param, op, eof
    text: str
    start: int
    end: int

    def is_keyword(self, word: str) -> bool:
        return self.kind == "ident" and self.text.upper() == word

    def shown(self) -> str:
        return "<EOF>" if self.kind == "eof" else self.text


_SKIP = re.compile(r"(?:\s+|//[^\n]*|/\*.*?\*/)+", re.DOTALL)
_COMMON_RULES = (
    ("string", r'"""(?:.|\n)*?"""|"(?:[^"\\\n]|\\.)*"'),
    ("qident", r"`(?:[^`]|``)*`"),
)
_EXPRESSION_RULES = (
    *_COMMON_RULES,
    ("decimal", r"\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+"),
    ("int", r"\d+"),
    ("param", r"\?(?:[A-Za-z_][A-Za-z0-9_]*|\d+)?"),
    ("ident", r"[A-Za-z_@][A-Za-z0-9_@.]*"),
    ("op", r"==|!=|<=|>=|[-+*/%<>=|,()]"),
)
#: KEEP / DROP / RENAME take column name patterns, where `*` is part of the name.
_PATTERN_RULES = (*_COMMON_RULES, ("ident", r"[A-Za-z0-9_@*][A-Za-z0-9_@.*]*"), ("op", r"[|,=]"))
#: FROM takes index patterns, which may hold `-`, `.`, `*` and `:`.
_SOURCE_RULES = (*_COMMON_RULES, ("ident", r"[A-Za-z0-9_.*:\-]+"), ("op", r"[|,]"))


def _compile_rules(rules: Sequence[tuple[str, str]]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in rules))


_MODES: Final = {
    "expression": _compile_rules(_EXPRESSION_RULES),
    "pattern": _compile_rules(_PATTERN_RULES),
    "source": _compile_rules(_SOURCE_RULES),
}


class _Scanner:
    """Tokens on demand, in the lexical mode the parser asks for (ES's lexer has modes too)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.offset = 0
        self._line_starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]

    def position(self, offset: int) -> Pos:
        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1

    def peek(self, mode: str = "expression") -> _Token:
        skipped = _SKIP.match(self.text, self.offset)
        start = skipped.end() if skipped else self.offset
        if start >= len(self.text):
            return _Token("eof", "", start, start)
        match = _MODES[mode].match(self.text, start)
        if match is None or match.lastgroup is None:
            line, column = self.position(start)
            raise ParsingError(line, column, f"token recognition error at: '{self.text[start : start + 10]}'")
        return _Token(match.lastgroup, match.group(), start, match.end())

    def next(self, mode: str = "expression") -> _Token:
        token = self.peek(mode)
        self.offset = token.end
        return token


# --- parser ----------------------------------------------------------------------------------


def parse(text: str, params: Sequence[Value] | Mapping[str, Value] | None = None) -> Query:
    """Parse `text`; `?` parameters take their values from `params` (a list, or names -> values)."""
    return _Parser(text, params).parse_query()


class _Parser:
    def __init__(self, text: str, params: Sequence[Value] | Mapping[str, Value] | None) -> None:
        self._scanner = _Scanner(text)
        self._text = text
        self._params = params if params is not None else []
        self._next_positional = 0

    # -- helpers --

    def _error(self, token: _Token, message: str) -> ParsingError:
        line, column = self._scanner.position(token.start)
        return ParsingError(line, column, message)

    def _mismatched(self, token: _Token, expecting: str) -> ParsingError:
        return self._error(token, f"mismatched input '{token.shown()}' expecting {expecting}")

    def _accept_op(self, op: str, mode: str = "expression") -> bool:
        token = self._scanner.peek(mode)
        if token.kind == "op" and token.text == op:
            self._scanner.next(mode)
            return True
        return False

    def _expect_op(self, op: str, mode: str = "expression") -> None:
        if not self._accept_op(op, mode):
            raise self._mismatched(self._scanner.peek(mode), f"'{op}'")

    def _accept_keyword(self, word: str) -> bool:
        if self._scanner.peek().is_keyword(word):
            self._scanner.next()
            return True
        return False

    def _node_text(self, start: int) -> str:
        return self._text[start : self._scanner.offset].strip()

    # -- query and commands --

    def parse_query(self) -> Query:
        source = self._source_command()
        commands: list[Command] = []
        while self._accept_op("|", "pattern"):
            commands.append(self._processing_command())
        end = self._scanner.peek()
        if end.kind != "eof":
            raise self._mismatched(end, "{<EOF>, '|'}")
        return Query(source, tuple(commands))

    def _source_command(self) -> From | RowSource:
        token = self._scanner.next()
        if token.is_keyword("FROM"):
            return From(self._name_list("source"))
        if token.is_keyword("ROW"):
            return RowSource(self._aliased_list())
        raise self._mismatched(token, _SOURCE_COMMANDS)

    def _processing_command(self) -> Command:
        token = self._scanner.next()
        word = token.text.upper() if token.kind == "ident" else ""
        if word == "WHERE":
            return Where(self._expression())
        if word == "EVAL":
            return Eval(self._aliased_list())
        if word == "STATS":
            return self._stats(token)
        if word == "SORT":
            return Sort(self._sort_keys())
        if word == "KEEP":
            return Keep(self._name_list("pattern"))
        if word == "DROP":
            return Drop(self._name_list("pattern"))
        if word == "RENAME":
            return Rename(self._rename_pairs())
        if word == "LIMIT":
            count = self._scanner.next()
            if count.kind != "int":
                raise self._mismatched(count, "INTEGER_LITERAL")
            return Limit(int(count.text))
        raise self._mismatched(token, _PROCESSING_COMMANDS)

    def _name_list(self, mode: str) -> tuple[NamePattern, ...]:
        names = [self._name(mode)]
        while self._accept_op(",", mode):
            names.append(self._name(mode))
        return tuple(names)

    def _name(self, mode: str) -> NamePattern:
        token = self._scanner.next(mode)
        position = self._scanner.position(token.start)
        if token.kind == "ident":
            return NamePattern(token.text, position)
        if token.kind == "qident":
            return NamePattern(token.text[1:-1].replace("``", "`"), position)
        if token.kind == "string" and mode == "source":
            return NamePattern(_string_value(token.text), position)
        raise self._mismatched(token, "{QUOTED_IDENTIFIER, UNQUOTED_IDENTIFIER}")

    def _stats(self, keyword: _Token) -> Stats:
        aggregates: tuple[Alias, ...] = ()
        token = self._scanner.peek()
        if not token.is_keyword("BY") and token.kind != "eof" and token.text != "|":
            aggregates = self._aliased_list()
        groups: tuple[Alias, ...] = ()
        if self._accept_keyword("BY"):
            groups = self._aliased_list()
        if not aggregates and not groups:
            raise self._mismatched(self._scanner.peek(), "an aggregate or BY")
        return Stats(aggregates, groups, self._scanner.position(keyword.start))

    def _sort_keys(self) -> tuple[SortKey, ...]:
        keys = [self._sort_key()]
        while self._accept_op(","):
            keys.append(self._sort_key())
        return tuple(keys)

    def _sort_key(self) -> SortKey:
        expr = self._expression()
        descending = False
        if self._accept_keyword("DESC"):
            descending = True
        else:
            self._accept_keyword("ASC")
        nulls_first = descending  # ES: nulls sort as larger than every value
        if self._accept_keyword("NULLS"):
            token = self._scanner.next()
            if token.is_keyword("FIRST"):
                nulls_first = True
            elif token.is_keyword("LAST"):
                nulls_first = False
            else:
                raise self._mismatched(token, "{'first', 'last'}")
        return SortKey(expr, descending, nulls_first)

    def _rename_pairs(self) -> tuple[tuple[NamePattern, str], ...]:
        pairs = [self._rename_pair()]
        while self._accept_op(",", "pattern"):
            pairs.append(self._rename_pair())
        return tuple(pairs)

    def _rename_pair(self) -> tuple[NamePattern, str]:
        first = self._name("pattern")
        if self._accept_op("=", "pattern"):  # `new = old` (ES 8.18+)
            return self._name("pattern"), first.text
        token = self._scanner.next("pattern")
        if not token.is_keyword("AS"):
            raise self._mismatched(token, "{'as', '='}")
        return first, self._name("pattern").text

    def _aliased_list(self) -> tuple[Alias, ...]:
        fields = [self._aliased()]
        while self._accept_op(","):
            fields.append(self._aliased())
        return tuple(fields)

    def _aliased(self) -> Alias:
        saved = self._scanner.offset
        token = self._scanner.next()
        is_name = token.kind in ("ident", "qident") and token.text.upper() not in _RESERVED
        if is_name and self._accept_op("="):
            name = token.text[1:-1].replace("``", "`") if token.kind == "qident" else token.text
            return Alias(name, self._expression())
        self._scanner.offset = saved
        expr = self._expression()
        return Alias(expr.text, expr)

    # -- expressions, lowest precedence first --

    def _expression(self) -> Expr:
        return self._or()

    def _or(self) -> Expr:
        start = self._scanner.peek().start
        left = self._and()
        while self._accept_keyword("OR"):
            right = self._and()
            left = Binary(left.pos, self._node_text(start), "OR", left, right)
        return left

    def _and(self) -> Expr:
        start = self._scanner.peek().start
        left = self._not()
        while self._accept_keyword("AND"):
            right = self._not()
            left = Binary(left.pos, self._node_text(start), "AND", left, right)
        return left

    def _not(self) -> Expr:
        token = self._scanner.peek()
        if self._accept_keyword("NOT"):
            operand = self._not()
            return Unary(self._scanner.position(token.start), self._node_text(token.start), "NOT", operand)
        return self._predicate()

    def _predicate(self) -> Expr:
        start = self._scanner.peek().start
        left = self._additive()
        token = self._scanner.peek()
        if token.kind == "op" and token.text in ("==", "!=", "<", "<=", ">", ">="):
            self._scanner.next()
            right = self._additive()
            return Binary(left.pos, self._node_text(start), token.text, left, right)
        if token.is_keyword("IS"):
            self._scanner.next()
            negated = self._accept_keyword("NOT")
            null = self._scanner.next()
            if not null.is_keyword("NULL"):
                raise self._mismatched(null, "'null'")
            return IsNull(left.pos, self._node_text(start), left, negated)
        negated = False
        if token.is_keyword("NOT"):
            self._scanner.next()
            negated = True
            token = self._scanner.peek()
            if not (token.is_keyword("LIKE") or token.is_keyword("IN")):
                raise self._mismatched(token, "{'in', 'like'}")
        if self._accept_keyword("LIKE"):
            pattern = self._scanner.next()
            if pattern.kind != "string":
                raise self._mismatched(pattern, "QUOTED_STRING")
            return Like(left.pos, self._node_text(start), left, _string_value(pattern.text), negated)
        if self._accept_keyword("IN"):
            self._expect_op("(")
            items = [self._additive()]
            while self._accept_op(","):
                items.append(self._additive())
            self._expect_op(")")
            return InList(left.pos, self._node_text(start), left, tuple(items), negated)
        return left

    def _additive(self) -> Expr:
        start = self._scanner.peek().start
        left = self._multiplicative()
        while True:
            token = self._scanner.peek()
            if token.kind != "op" or token.text not in ("+", "-"):
                return left
            self._scanner.next()
            right = self._multiplicative()
            left = Binary(left.pos, self._node_text(start), token.text, left, right)

    def _multiplicative(self) -> Expr:
        start = self._scanner.peek().start
        left = self._unary()
        while True:
            token = self._scanner.peek()
            if token.kind != "op" or token.text not in ("*", "/", "%"):
                return left
            self._scanner.next()
            right = self._unary()
            left = Binary(left.pos, self._node_text(start), token.text, left, right)

    def _unary(self) -> Expr:
        token = self._scanner.peek()
        if token.kind == "op" and token.text in ("-", "+"):
            self._scanner.next()
            operand = self._unary()
            if token.text == "+":
                return operand
            return Unary(self._scanner.position(token.start), self._node_text(token.start), "-", operand)
        return self._primary()

    def _primary(self) -> Expr:
        token = self._scanner.next()
        pos = self._scanner.position(token.start)
        if token.kind == "int":
            return self._integer_or_time_span(token, pos)
        if token.kind == "decimal":
            return Literal(pos, token.text, float(token.text), DOUBLE)
        if token.kind == "string":
            return Literal(pos, token.text, _string_value(token.text), KEYWORD)
        if token.kind == "param":
            value = self._param_value(token)
            return Literal(pos, token.text, value, literal_type(value))
        if token.kind == "qident":
            return FieldRef(pos, token.text, token.text[1:-1].replace("``", "`"))
        if token.kind == "op" and token.text == "(":
            inner = self._expression()
            self._expect_op(")")
            return inner
        if token.kind == "ident":
            word = token.text.upper()
            if word in ("TRUE", "FALSE"):
                return Literal(pos, token.text, word == "TRUE", BOOLEAN)
            if word == "NULL":
                return Literal(pos, token.text, None, NULL)
            if word not in _RESERVED:
                if self._accept_op("("):
                    return self._call(token, pos)
                return FieldRef(pos, token.text, token.text)
        raise self._mismatched(token, "an expression")

    def _integer_or_time_span(self, token: _Token, pos: Pos) -> Expr:
        value = int(token.text)
        qualifier = self._scanner.peek()
        if qualifier.kind == "ident" and qualifier.text.upper() not in _RESERVED:
            self._scanner.next()
            unit = TIME_UNITS.get(qualifier.text.lower())
            if unit is None:
                raise self._error(token, f"Unexpected time interval qualifier: '{qualifier.text}'")
            return TimeSpan(pos, self._node_text(token.start), value, unit)
        if INT_MIN <= value <= INT_MAX:
            return Literal(pos, token.text, value, INTEGER)
        if value <= 2**63 - 1:
            return Literal(pos, token.text, value, LONG)
        return Literal(pos, token.text, float(value), DOUBLE)

    def _call(self, name: _Token, pos: Pos) -> Call:
        args: list[Expr] = []
        star = self._scanner.peek()
        if star.kind == "op" and star.text == "*":
            self._scanner.next()
            args.append(Star(self._scanner.position(star.start), "*"))
        elif not (star.kind == "op" and star.text == ")"):
            args.append(self._expression())
            while self._accept_op(","):
                args.append(self._expression())
        self._expect_op(")")
        return Call(pos, self._node_text(name.start), name.text.upper(), tuple(args))

    def _param_value(self, token: _Token) -> Value:
        marker = token.text[1:]
        if isinstance(self._params, Mapping):
            if not marker or marker.isdigit():
                raise self._error(token, f"Not enough actual parameters {len(self._params)}")
            if marker not in self._params:
                raise self._error(token, f"Unknown query parameter [{marker}]")
            return self._params[marker]
        if marker and not marker.isdigit():
            raise self._error(token, f"Unknown query parameter [{marker}]")
        index = int(marker) - 1 if marker else self._next_positional
        self._next_positional = index + 1
        if not 0 <= index < len(self._params):
            raise self._error(token, f"Not enough actual parameters {len(self._params)}")
        return self._params[index]


def literal_type(value: Value) -> str:
    """The ES|QL type of a parameter value."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER if INT_MIN <= value <= INT_MAX else LONG
    if isinstance(value, float):
        return DOUBLE
    return KEYWORD


_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _string_value(token_text: str) -> str:
    if token_text.startswith('"""'):
        return token_text[3:-3]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), token_text[1:-1])
