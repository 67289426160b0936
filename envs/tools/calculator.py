"""A safe arithmetic calculator: the expression is parsed to an AST and walked; nothing is ever eval'd.

Every input is bounded before Python's parser sees it (length, parenthesis depth) because the parser itself
recurses; every operation is bounded before it runs (operand magnitude, exponent size, result magnitude), so
hostile inputs such as `9**9**9**9` or 10 000 nested parentheses return an `Error:` string in microseconds.
Only ASCII is accepted: Unicode digits (Arabic-Indic, fullwidth) get an error naming the character, not a guess.

Results print with up to SIGNIFICANT_DIGITS significant digits, not a fixed number of decimals, so small values
survive (`1/3000000` is `3.33333333333e-7`, `2**-64` is `5.42101086243e-20`) and float noise does not show
(`0.1+0.2` is `0.3`); whole numbers print as integers (`84/4` is `21`), and values below 1e-4 or at or above 1e12
in scientific notation. The graders read that notation, so an answer copied from the calculator is graded as the
value the calculator computed.

An `Error:` result means the expression was rejected; the environment counts such a call as an invalid tool call.
"""

from __future__ import annotations

import ast
import math
import operator
import re

MAX_EXPRESSION_CHARS = 200
MAX_PAREN_DEPTH = 20
MAX_AST_NODES = 400
MAX_MAGNITUDE = 1e12
MAX_EXPONENT = 64
MAX_OUTPUT_CHARS = 40
SIGNIFICANT_DIGITS = 12
_EXPONENT = re.compile(r"e([-+])0*(\d+)$")  # the exponent of a "g"-formatted float, e.g. "e-07", "e+12"

Number = int | float

_BINARY_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_OP_HINTS = {ast.BitXor: "use ** for powers", ast.Mod: "% is not supported"}


class CalculatorError(ValueError):
    """A user-facing reason why an expression was rejected."""


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with numbers, + - * / **, and parentheses.

    Args:
        expression: The arithmetic expression to evaluate, for example "23*(4+5)" or "7/2".

    Returns:
        The result as a number, or a message that starts with "Error:".
    """
    try:
        return format_number(evaluate(expression))
    except CalculatorError as exc:
        return f"Error: {exc}"
    except (RecursionError, MemoryError):
        return "Error: expression is too complex"
    except Exception as exc:  # the tool contract is "never raise"; a bug here must not crash an episode
        return f"Error: could not evaluate ({type(exc).__name__})"


def evaluate(expression: str) -> Number:
    """Check the bounds, parse and evaluate `expression`; raises CalculatorError with a short reason."""
    if not isinstance(expression, str):
        raise CalculatorError("expression must be a string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.strip()
    if not text:
        raise CalculatorError("empty expression")
    if not text.isascii():
        # Python's parser rejects most non-ASCII digits with a bare "invalid syntax"; name the culprit instead.
        culprit = next(char for char in text if not char.isascii())
        raise CalculatorError(f"non-ASCII character U+{ord(culprit):04X}; write numbers with the digits 0-9")
    if paren_depth(text) > MAX_PAREN_DEPTH:
        raise CalculatorError(f"more than {MAX_PAREN_DEPTH} nested parentheses")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError("invalid syntax") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_AST_NODES:
        raise CalculatorError("expression is too long")
    return _eval_node(tree.body)


def paren_depth(text: str) -> int:
    """Deepest bracket nesting in `text` (any bracket kind, since the parser nests on all of them)."""
    depth = deepest = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def _eval_node(node: ast.AST) -> Number:
    """Evaluate one whitelisted node; anything else (names, calls, attributes, ...) is rejected."""
    if isinstance(node, ast.Constant):
        return _check_constant(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval_node(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        return _check_magnitude(_apply(node.op, _eval_node(node.left), _eval_node(node.right)))
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        hint = _OP_HINTS.get(type(node.op), "only + - * / ** are supported")
        raise CalculatorError(f"unsupported operator ({hint})")
    raise CalculatorError(f"unsupported element {type(node).__name__!r}; only numbers, + - * / ** and ( ) allowed")


def _apply(op: ast.operator, left: Number, right: Number) -> Number:
    """One binary operation, with its specific bounds checked before computing."""
    if type(op) in _BINARY_OPS:
        return _BINARY_OPS[type(op)](left, right)
    if isinstance(op, ast.Div):
        return _divide(left, right)
    if isinstance(op, ast.FloorDiv):  # GSM8K's annotations use // (e.g. <<25//4=6>>)
        if right == 0:
            raise CalculatorError("division by zero")
        return left // right
    if isinstance(op, ast.Pow):
        return _power(left, right)
    hint = _OP_HINTS.get(type(op), "only + - * / ** are supported")
    raise CalculatorError(f"unsupported operator ({hint})")


def _divide(left: Number, right: Number) -> Number:
    """Exact integer quotients stay integers (so 84/4 prints "21"); others become floats."""
    if right == 0:
        raise CalculatorError("division by zero")
    if isinstance(left, int) and isinstance(right, int) and left % right == 0:
        return left // right
    return left / right


def _power(base: Number, exponent: Number) -> Number:
    """Power with the exponent and the result's size bounded before anything is computed."""
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent larger than {MAX_EXPONENT}")
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero")
    if base < 0 and not float(exponent).is_integer():
        raise CalculatorError("fractional power of a negative number")
    if base != 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise CalculatorError(f"result larger than {MAX_MAGNITUDE:.0e}")
    return base**exponent


def _check_constant(value: object) -> Number:
    """Accept int and float literals only (bool is an int subclass, and complex/str are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError(f"unsupported constant {type(value).__name__!r}; only numbers allowed")
    return _check_magnitude(value)


def _check_magnitude(value: Number) -> Number:
    """Keep every intermediate within ±MAX_MAGNITUDE (and finite)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise CalculatorError(f"number larger than {MAX_MAGNITUDE:.0e}")
    return value


def format_number(value: Number) -> str:
    """Integers as integers; other floats with up to SIGNIFICANT_DIGITS significant digits, e.g. "3.33333333333e-7".

    The "g" format drops trailing zeros and switches to scientific notation below 1e-4 and at 1e12; the exponent
    is written without "+" and leading zeros ("1e12", "5e-7"), which is shorter for a byte-level model.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # also turns -0.0 into 0
    if isinstance(value, int):
        text = str(value)
    else:
        text = _EXPONENT.sub(_short_exponent, f"{value:.{SIGNIFICANT_DIGITS}g}")
    return text if len(text) <= MAX_OUTPUT_CHARS else "Error: result is too long"


def _short_exponent(match: re.Match) -> str:
    """Shorten a "g" exponent: e-07 becomes e-7, e+12 becomes e12."""
    return "e" + ("-" if match.group(1) == "-" else "") + match.group(2)
