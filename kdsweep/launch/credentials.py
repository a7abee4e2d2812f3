"""Passwords out of generated jobs: split them off the store URLs, check the files that hold them.

A worker finds them in its environment instead: libpq reads ``PGPASSWORD`` for a
``postgresql://user@host/db`` URL, and MLflow's client reads ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD``. So a script or manifest names the stores without their passwords.
"""

from __future__ import annotations

import re
import stat
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from kdsweep.errors import LaunchError

PG_PASSWORD = "PGPASSWORD"
MLFLOW_USER, MLFLOW_PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
SECRET_NAMES = (PG_PASSWORD, MLFLOW_USER, MLFLOW_PASSWORD)
ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class Stores:
    """The study's store URLs without passwords, and the passwords taken off them (by env name)."""

    storage: str
    tracking_uri: str
    secrets: dict[str, str] = field(default_factory=dict)


def split_stores(storage: str, tracking_uri: str) -> Stores:
    import sqlalchemy

    secrets: dict[str, str] = {}
    url = sqlalchemy.engine.make_url(storage)
    if url.password:
        secrets[PG_PASSWORD] = str(url.password)
        # URL.set(password=None) keeps the password: build the URL again without it
        storage = sqlalchemy.engine.URL.create(url.drivername, username=url.username, host=url.host, port=url.port,
                                               database=url.database, query=url.query).render_as_string()
    parts = urllib.parse.urlsplit(tracking_uri)
    if parts.username or parts.password:
        if parts.username:
            secrets[MLFLOW_USER] = urllib.parse.unquote(parts.username)
        if parts.password:
            secrets[MLFLOW_PASSWORD] = urllib.parse.unquote(parts.password)
        host = parts.netloc.rsplit("@", 1)[1]
        tracking_uri = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return Stores(storage, tracking_uri, secrets)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a file only its owner can read (mode 600), as a job will source it."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise LaunchError(f"--env-file={str(path)!r}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise LaunchError(f"--env-file={str(path)!r}: not a regular file")
    if mode & 0o077:
        raise LaunchError(f"--env-file={str(path)!r}: mode {stat.S_IMODE(mode):03o} lets other users read "
                          f"its passwords; run chmod 600 {path}")
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = ENV_LINE.match(line)
        if match is None:  # the line itself may hold a password: name its number only
            raise LaunchError(f"--env-file={str(path)!r}: line {number} is not KEY=VALUE")
        values[match[1]] = match[2].strip().strip("'\"")
    return values


def assert_no_secret(text: str, secrets: dict[str, str], what: str) -> None:
    """Last line of defence: refuse to write ``what`` if any password appears in it."""
    leaked = sorted(name for name, value in secrets.items()
                    if name.endswith("PASSWORD") and len(value) >= 4 and value in text)
    if leaked:
        raise LaunchError(f"{what}: would contain the value of {', '.join(leaked)}; pass the store URLs "
                          "without passwords in the spec file and give the passwords by environment")
