"""Number and token formats shared by the report, the plot, the terminal and the HTML views."""

from __future__ import annotations


def num(x, fmt: str = "{:.3f}") -> str:
    """A number, or an em dash for a missing one (a null score is shown, never hidden as 0)."""
    return "—" if x is None else fmt.format(x)


def format_params(n) -> str:
    """A parameter count in K/M/B, as model sizes are usually quoted."""
    if n is None:
        return "?"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.{0 if n / div >= 100 else 1}f}{unit}"
    return str(n)


def token_text(token: str) -> str:
    """A token made visible: newlines and tabs as symbols, so an excerpt stays one line."""
    return token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "")
