"""Where hits are stored: the `--db` option, `MONGOL_DB`, or the embedded default."""

import os
from pathlib import Path

ENV_VAR = "MONGOL_DB"


def default_db_path() -> Path:
    """The embedded store shared by mongol-serve and mongol-report when nothing is configured.

    Follows the XDG base directory rule: `$XDG_DATA_HOME/mongol/mongol.db`,
    else `~/.local/share/mongol/mongol.db`.
    """
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "mongol" / "mongol.db"


def resolve_db_uri(option: str | None) -> str:
    """The store URI: the command-line option first, then `MONGOL_DB`, then the default file."""
    if option:
        return option
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    return "sqlite://" + str(default_db_path())
