"""Settings from environment variables, with defaults that make the embedded (SQLite) run work."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BOT_ID = "gov.experimenttracker"
OPERATIONS_TOPIC = "polytraders.reports.operations"
DEVELOPER_TOPIC = "polytraders.reports.developer"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def normalise_db_url(url: str) -> str:
    """Pin the psycopg2 driver for PostgreSQL URLs.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which this project does not install.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a number") from exc
    if value <= 0:
        raise SettingsError(f"{name}={raw!r} must be > 0")
    return value


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    db_url: str
    landing_dir: Path
    experiments_dir: Path
    caliper_seconds: float
    stall_window_seconds: float
    registry_url: str | None = None

    @classmethod
    def from_env(cls) -> "Settings":
        data_dir = Path(os.environ.get("EXPERIMENTTRACKER_DATA_DIR") or "./data").resolve()
        db_url = os.environ.get("EXPERIMENTTRACKER_DB_URL") or f"sqlite:///{data_dir / 'experimenttracker.db'}"
        if "://" not in db_url:
            raise SettingsError(f"EXPERIMENTTRACKER_DB_URL={db_url!r} is not an SQLAlchemy URL")
        landing = os.environ.get("EXPERIMENTTRACKER_LANDING_DIR")
        experiments = os.environ.get("EXPERIMENTTRACKER_EXPERIMENTS_DIR")
        return cls(
            data_dir=data_dir,
            db_url=normalise_db_url(db_url),
            landing_dir=Path(landing).resolve() if landing else data_dir / "landing",
            experiments_dir=Path(experiments).resolve() if experiments else data_dir / "experiments",
            caliper_seconds=_float_env("EXPERIMENTTRACKER_CALIPER_SECONDS", 60.0),
            stall_window_seconds=_float_env("EXPERIMENTTRACKER_STALL_WINDOW_SECONDS", 3600.0),
            registry_url=os.environ.get("EXPERIMENTTRACKER_REGISTRY_URL") or None,
        )
