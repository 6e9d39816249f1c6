"""The ``.agentq/env`` that ``make dev`` writes, read by ``agentq`` commands in the checkout.

As ``flask`` reads ``.flaskenv``: the file is looked for in the current directory and its
parents, stopping at the checkout's root (the directory holding ``.git``), and its variables
fill in the environment without replacing any already set.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values

# Where agentq.dev writes it: DevSettings.data_dir's default, then "env".
ENV_FILE = Path(".agentq") / "env"


def find(start: Path) -> Path | None:
    """The ``.agentq/env`` in ``start`` or its nearest parent, not above a ``.git`` root."""
    for directory in (start, *start.parents):
        if (directory / ENV_FILE).is_file():
            return directory / ENV_FILE
        if (directory / ".git").exists():
            return None
    return None


def load(path: Path) -> list[str]:
    """Set the file's variables that the environment lacks; return the names set."""
    # The CLI's settings are read from the environment, so that is where the file goes,
    # as `export $(cat .agentq/env)` would put it (no ${...} expansion either).
    values = dotenv_values(path, interpolate=False)
    taken = {name: value for name, value in values.items()
             if value is not None and name not in os.environ}
    os.environ.update(taken)
    return list(taken)
