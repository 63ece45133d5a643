"""Optional extras: a feature whose package is not installed stops with `error: ...` naming the extra to install."""

from __future__ import annotations

import importlib.util


class MissingExtra(SystemExit):
    """An optional package is missing. A SystemExit whose message Python prints as is: no traceback, exit code 1."""

    def __init__(self, what: str, module: str, extra: str):
        super().__init__(f"error: {what} needs the `{module}` package, which is not installed; install vlmtune's "
                         f"`{extra}` extra: pip install -e \".[{extra}]\" (from a checkout) or "
                         f"pip install \"vlmtune[{extra}]\"")
        self.module, self.extra = module, extra


def require(module: str, extra: str, what: str) -> None:
    """Raise MissingExtra unless `module` can be imported."""
    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise MissingExtra(what, module, extra)
