"""Where hits are stored: the `--db` option, `MONGOL_DB`, or the embedded default."""

import hashlib
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


def checked_db_uri(option: str | None) -> str:
    """resolve_db_uri, checked as every program checks it before it starts: StoreError (one line) for an
    SQLite URI that names no file, or a file whose folder does not exist (the default store's folder is
    created). A typo must not give each program a store of its own. An SQLite URI comes back naming its
    file by absolute path (`sqlite:////abs/file.db`), so that every process of the program opens that
    file, whatever its current folder."""
    uri = resolve_db_uri(option)
    if uri.startswith("sqlite:"):
        from mongol.stores import check_sqlite_folder, sqlite_path

        check_sqlite_folder(uri)
        return "sqlite:///" + sqlite_path(uri)
    return uri


def default_spool(uri: str) -> Path:
    """Where hits wait for the store: beside an SQLite file (`FILE.spool`), else in the data folder,
    one folder per MongoDB URI."""
    if uri.startswith("sqlite:"):
        from mongol.stores import sqlite_path

        return Path(sqlite_path(uri)).with_suffix(".spool")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return default_db_path().parent / f"spool-{digest}"
