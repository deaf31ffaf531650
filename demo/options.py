"""Command-line options the demo trainers share."""
from __future__ import annotations


def add_polish_option(p, default: tuple[tuple[int, float], ...]) -> None:
    """``--polish EPOCHS:LR,...``: gentler one-cycles after the first ('' for none)."""
    p.add_argument("--polish", default=",".join(f"{e}:{lr:g}" for e, lr in default),
                   help="gentler one-cycles after the first, EPOCHS:LR,... ('' for none)")


def parsed_polish(p, text: str) -> tuple[tuple[int, float], ...]:
    """The (epochs, lr) cycles of a ``--polish`` value; a malformed one is the parser's one-line error."""
    try:
        return tuple((int(e), float(lr)) for e, lr in (c.split(":") for c in text.split(",") if c.strip()))
    except ValueError:
        p.error(f"--polish takes EPOCHS:LR,... (e.g. 3:3e-4,2:1e-4), not {text!r}")
