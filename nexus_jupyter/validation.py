"""Checks of caller input, each raising InvalidArgument with a one-line message."""

from __future__ import annotations

import math
from collections.abc import Mapping

from .errors import InvalidArgument

LANGUAGES = ("python", "javascript", "bash")
LANGUAGE_ALIASES = {
    "py": "python",
    "python3": "python",
    "js": "javascript",
    "node": "javascript",
    "nodejs": "javascript",
    "sh": "bash",
    "shell": "bash",
}


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def whole_number(value, what: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidArgument(f"{what} must be a whole number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidArgument(f"{what} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number) or not minimum <= number <= maximum:
        raise InvalidArgument(f"{what} must be a whole number from {minimum} to {maximum}, got {value!r}")
    return int(number)


def positive_number(value, what: str, maximum: float, unit: str = "") -> float:
    unit_text = f" {unit}" if unit else ""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a number{unit_text}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what} must be a number{unit_text}, got {value!r}") from None
    if not math.isfinite(number) or not 0 < number <= maximum:
        raise InvalidArgument(f"{what} must be more than 0 and at most {maximum:g}{unit_text}, got {value!r}")
    return number


def normalize_language(language) -> str:
    name = str(language or "").strip().lower()
    name = LANGUAGE_ALIASES.get(name, name)
    if name not in LANGUAGES:
        raise InvalidArgument(f"unsupported language {language!r} (choose from: {', '.join(LANGUAGES)})")
    return name


def check_text(value, what: str, *, max_length: int = 200) -> str:
    """A caller's text field (a name, an id, a tag): a string SQLite and every front end can
    hold: no NUL, no lone surrogate (JSON allows one; UTF-8 does not)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be text, got {type(value).__name__}")
    if "\0" in value or len(value) > max_length:
        raise InvalidArgument(f"{what} must be text of at most {max_length} characters, without NUL")
    _encodable(value, what)
    return value


def _encodable(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid text: it holds a lone surrogate") from None


def check_code(code) -> str:
    if code is None:
        raise InvalidArgument("no code to run")
    if isinstance(code, bytes):
        try:
            code = code.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("code is not valid UTF-8") from None
    if not isinstance(code, str):
        raise InvalidArgument(f"code must be text, got {type(code).__name__}")
    if "\0" in code:
        raise InvalidArgument("code contains a NUL byte")
    _encodable(code, "code")
    if not code.strip():
        raise InvalidArgument("no code to run (the code is empty)")
    return code


def check_path(path) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidArgument("a file path is required")
    if "\0" in path:
        raise InvalidArgument("the file path contains a NUL byte")
    _encodable(path, "the file path")
    return path


def check_env(env) -> dict[str, str]:
    """Environment variables for runs: a mapping of names to text, each usable by execve."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise InvalidArgument(f"env must be a mapping of names to values, got {type(env).__name__}")
    checked = {}
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InvalidArgument(f"env name {key!r} is not usable: a non-empty name without '=' or NUL")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InvalidArgument(f"env value of {key} must be text, got {type(value).__name__}")
        text = str(value)
        if "\0" in text:
            raise InvalidArgument(f"env value of {key} contains a NUL byte")
        _encodable(key, "an env name")
        _encodable(text, f"env value of {key}")
        checked[key] = text
    return checked
