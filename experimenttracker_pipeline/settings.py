"""The one source of configuration: every environment variable the project reads is read here, typed and validated.

Defaults make the embedded run work (SQLite store and landing folder under ``./data``). The README's Settings table
lists each variable; a malformed value raises `SettingsError` naming the variable.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

BOT_ID = "gov.experimenttracker"
OPERATIONS_TOPIC = "polytraders.reports.operations"
DEVELOPER_TOPIC = "polytraders.reports.developer"
DEFAULT_BUS_SUBJECTS = ("polytraders.reports.>",)


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


class _Env:
    """Typed reads of one environment mapping; every error names the variable."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ

    def text(self, name: str) -> str | None:
        value = self.environ.get(name)
        return value if value not in (None, "") else None

    def number(self, name: str, default: float, *, minimum: float = 0.0, inclusive: bool = False) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}={raw!r} is not a number") from exc
        if not math.isfinite(value) or not (value >= minimum if inclusive else value > minimum):
            raise SettingsError(f"{name}={raw!r} must be {'>=' if inclusive else '>'} {minimum:g} and finite")
        return value

    def whole(self, name: str, default: int, *, minimum: int = 1) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}={raw!r} is not a whole number") from exc
        if value < minimum:
            raise SettingsError(f"{name}={raw!r} must be >= {minimum}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = (self.text(name) or default).strip().lower()
        if raw not in choices:
            raise SettingsError(f"{name}={raw!r} must be one of {', '.join(choices)}")
        return raw

    def bus_url(self, name: str) -> str | None:
        raw = self.text(name)
        if raw is None:
            return None
        for server in raw.split(","):
            scheme, sep, rest = server.strip().partition("://")
            if not sep or scheme not in ("nats", "tls", "ws", "wss") or not rest:
                raise SettingsError(f"{name}={raw!r}: each server must be nats://, tls://, ws:// or wss://host:port")
        return raw

    def subjects(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self.text(name)
        if raw is None:
            return default
        subjects = tuple(s.strip() for s in raw.split(","))
        for subject in subjects:
            tokens = subject.split(".")
            if not subject or any(not t or " " in t for t in tokens) or (">" in tokens and tokens.index(">") != len(tokens) - 1):
                raise SettingsError(f"{name}={raw!r}: {subject!r} is not a NATS subject (dot-separated tokens, '>' only last)")
        return subjects

    def name(self, name: str, default: str) -> str:
        raw = self.text(name) or default
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", raw):
            raise SettingsError(f"{name}={raw!r} must be 1-64 letters, digits, '-' or '_'")
        return raw

    def file(self, name: str) -> Path | None:
        raw = self.text(name)
        if raw is None:
            return None
        path = Path(raw).expanduser().resolve()
        if not path.is_file():
            raise SettingsError(f"{name}={raw!r} is not a readable file")
        return path

    def db_url(self, name: str, default: str | None) -> str | None:
        raw = self.text(name) or default
        if raw is None:
            return None
        if "://" not in raw:
            raise SettingsError(f"{name}={raw!r} is not an SQLAlchemy URL")
        return normalise_db_url(raw)


def _at_most(name: str, value: int, limit: int) -> int:
    if value > limit:
        raise SettingsError(f"{name}={value} must be <= {limit}")
    return value


@dataclass(frozen=True)
class Settings:
    """Where the data lives and how the pipeline behaves; `Settings.from_env()` reads them all."""

    data_dir: Path
    db_url: str
    landing_dir: Path
    experiments_dir: Path
    caliper_seconds: float = 60.0
    stall_window_seconds: float = 3600.0
    registry_url: str | None = None
    registry_timeout_ms: int = 5000
    # Sensors (decorator arguments, so read when the definitions load).
    sensors_running: bool = True
    sensor_interval_seconds: int = 30
    sensor_retry_seconds: float = 300.0
    evaluation_step_pct: float = 10.0
    evaluation_step_n: int = 1
    # Batching: experiments per Dagster run of experiment_pass_job, and its steps (each a Celery task with Celery).
    pass_run_size: int = 1000
    pass_steps: int = 8
    # HTML reports a pass renders at most (newest verdicts first); the rest wait for the next pass or `report --all`.
    reports_per_pass: int = 25
    # Where the steps of experiment_pass_job run: in the run's process, or on Celery workers.
    executor: str = "in_process"
    celery_broker: str = "redis://127.0.0.1:6379/0"
    celery_backend: str = "redis://127.0.0.1:6379/1"
    # Dagster's own instance (runs, events, schedules).
    dagster_home: Path | None = None
    dagster_pg_url: str | None = None
    dagster_pg_password: str | None = None
    # The report bus (NATS JetStream); bus_url None: no bus, the landing folder is the only report source.
    bus_url: str | None = None
    bus_stream: str = "REPORTS"
    bus_subjects: tuple[str, ...] = DEFAULT_BUS_SUBJECTS
    bus_consumer: str = "experimenttracker"
    bus_batch_size: int = 1000
    bus_max_per_run: int = 50_000
    bus_ack_wait_seconds: float = 60.0
    bus_creds_file: Path | None = None
    bus_tls_ca_file: Path | None = None
    bus_connect_timeout_seconds: float = 2.0
    # `experimenttracker serve` (metrics and health).
    serve_host: str = "127.0.0.1"
    serve_port: int = 9496

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = _Env(os.environ if environ is None else environ)
        data_dir = Path(env.text("EXPERIMENTTRACKER_DATA_DIR") or "./data").resolve()
        landing = env.text("EXPERIMENTTRACKER_LANDING_DIR")
        experiments = env.text("EXPERIMENTTRACKER_EXPERIMENTS_DIR")
        home = env.text("DAGSTER_HOME")
        return cls(
            data_dir=data_dir,
            db_url=env.db_url("EXPERIMENTTRACKER_DB_URL", f"sqlite:///{data_dir / 'experimenttracker.db'}"),
            landing_dir=Path(landing).resolve() if landing else data_dir / "landing",
            experiments_dir=Path(experiments).resolve() if experiments else data_dir / "experiments",
            caliper_seconds=env.number("EXPERIMENTTRACKER_CALIPER_SECONDS", 60.0),
            stall_window_seconds=env.number("EXPERIMENTTRACKER_STALL_WINDOW_SECONDS", 3600.0),
            registry_url=env.text("EXPERIMENTTRACKER_REGISTRY_URL"),
            registry_timeout_ms=env.whole("EXPERIMENTTRACKER_REGISTRY_TIMEOUT_MS", 5000),
            sensors_running=env.choice("EXPERIMENTTRACKER_SENSORS", "running", ("running", "stopped")) == "running",
            sensor_interval_seconds=env.whole("EXPERIMENTTRACKER_SENSOR_INTERVAL_SECONDS", 30),
            sensor_retry_seconds=env.number("EXPERIMENTTRACKER_SENSOR_RETRY_SECONDS", 300.0),
            evaluation_step_pct=env.number("EXPERIMENTTRACKER_EVALUATION_STEP_PCT", 10.0, inclusive=True),
            evaluation_step_n=env.whole("EXPERIMENTTRACKER_EVALUATION_STEP_N", 1),
            pass_run_size=env.whole("EXPERIMENTTRACKER_PASS_RUN_SIZE", 1000),
            pass_steps=env.whole("EXPERIMENTTRACKER_PASS_STEPS", 8),
            reports_per_pass=env.whole("EXPERIMENTTRACKER_REPORTS_PER_PASS", 25, minimum=0),
            executor=env.choice("EXPERIMENTTRACKER_EXECUTOR", "in_process", ("in_process", "celery")),
            celery_broker=env.text("EXPERIMENTTRACKER_CELERY_BROKER") or "redis://127.0.0.1:6379/0",
            celery_backend=env.text("EXPERIMENTTRACKER_CELERY_BACKEND") or "redis://127.0.0.1:6379/1",
            dagster_home=Path(home).resolve() if home else None,
            dagster_pg_url=env.db_url("EXPERIMENTTRACKER_DAGSTER_PG_URL", None),
            dagster_pg_password=env.text("EXPERIMENTTRACKER_DAGSTER_PG_PASSWORD"),
            bus_url=env.bus_url("EXPERIMENTTRACKER_BUS_URL"),
            bus_stream=env.name("EXPERIMENTTRACKER_BUS_STREAM", "REPORTS"),
            bus_subjects=env.subjects("EXPERIMENTTRACKER_BUS_SUBJECTS", DEFAULT_BUS_SUBJECTS),
            bus_consumer=env.name("EXPERIMENTTRACKER_BUS_CONSUMER", "experimenttracker"),
            bus_batch_size=_at_most("EXPERIMENTTRACKER_BUS_BATCH_SIZE", env.whole("EXPERIMENTTRACKER_BUS_BATCH_SIZE", 1000), 10_000),
            bus_max_per_run=env.whole("EXPERIMENTTRACKER_BUS_MAX_PER_RUN", 50_000),
            bus_ack_wait_seconds=env.number("EXPERIMENTTRACKER_BUS_ACK_WAIT_SECONDS", 60.0),
            bus_creds_file=env.file("EXPERIMENTTRACKER_BUS_CREDS_FILE"),
            bus_tls_ca_file=env.file("EXPERIMENTTRACKER_BUS_TLS_CA_FILE"),
            bus_connect_timeout_seconds=env.number("EXPERIMENTTRACKER_BUS_CONNECT_TIMEOUT_SECONDS", 2.0),
            serve_host=env.text("EXPERIMENTTRACKER_SERVE_HOST") or "127.0.0.1",
            serve_port=_at_most("EXPERIMENTTRACKER_SERVE_PORT", env.whole("EXPERIMENTTRACKER_SERVE_PORT", 9496), 65535),
        )

    @property
    def dagster_home_or_default(self) -> Path:
        """DAGSTER_HOME, or the data folder's ``dagster_home`` for the embedded run."""
        return self.dagster_home or self.data_dir / "dagster_home"

    def with_folders(self, *, landing_dir: Path | None = None, experiments_dir: Path | None = None) -> "Settings":
        """The same settings reading another archive (backfills)."""
        return replace(self, landing_dir=landing_dir or self.landing_dir,
                       experiments_dir=experiments_dir or self.experiments_dir)


# ---- the key of the chain anchors ------------------------------------------------------------------------------
ANCHOR_KEY_FILE_NAME = "anchor.key"
MIN_ANCHOR_KEY_LENGTH = 16


@dataclass(frozen=True)
class AnchorKey:
    """The secret of the chain-anchor HMACs and where it came from (never the database)."""

    secret: bytes
    source: str  # the variable, or the key file's path
    generated: bool = False  # True: no key was configured and this process created the key file


def anchor_key(environ: Mapping[str, str] | None = None) -> AnchorKey:
    """The chain-anchor key: ``EXPERIMENTTRACKER_ANCHOR_KEY`` (the secret itself), else the file named by
    ``EXPERIMENTTRACKER_ANCHOR_KEY_FILE``, else ``<data folder>/anchor.key``, created with 32 random bytes (mode
    0600) the first time. Read at each use, so every process of a deployment must see the same key."""
    env = _Env(os.environ if environ is None else environ)
    secret = env.text("EXPERIMENTTRACKER_ANCHOR_KEY")
    if secret is not None:
        return AnchorKey(_key_bytes("EXPERIMENTTRACKER_ANCHOR_KEY", secret), "EXPERIMENTTRACKER_ANCHOR_KEY")
    configured = env.file("EXPERIMENTTRACKER_ANCHOR_KEY_FILE")
    if configured is not None:
        text = configured.read_text(encoding="utf-8").strip()
        return AnchorKey(_key_bytes(f"EXPERIMENTTRACKER_ANCHOR_KEY_FILE={configured}", text), str(configured))
    path = Path(env.text("EXPERIMENTTRACKER_DATA_DIR") or "./data").resolve() / ANCHOR_KEY_FILE_NAME
    generated = False
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: of two processes starting together one creates the key, the other reads it
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(secrets.token_hex(32) + "\n")
            generated = True
    text = ""
    for _ in range(50):  # the creator may not have written the key yet
        text = path.read_text(encoding="utf-8").strip()
        if text:
            break
        time.sleep(0.02)
    return AnchorKey(_key_bytes(str(path), text), str(path), generated)


def _key_bytes(name: str, text: str) -> bytes:
    if len(text) < MIN_ANCHOR_KEY_LENGTH:
        raise SettingsError(f"{name}: the anchor key must be at least {MIN_ANCHOR_KEY_LENGTH} characters")
    return text.encode("utf-8")
