"""Where the test suite finds PostgreSQL: EXPERIMENTTRACKER_TEST_PG_URL, default the machine's local server."""

from __future__ import annotations

import os

PG_ADMIN_URL = os.environ.get("EXPERIMENTTRACKER_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
