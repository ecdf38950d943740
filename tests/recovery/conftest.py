"""The real database servers' fixtures (skip when down, fail under CI=true), shared from engines."""

from tests.engines.conftest import (  # noqa: F401 - re-exported as fixtures
    mariadb_server,
    my_database,
    pg_database,
    pg_server,
)
from tests.recovery.forged import listener, secret  # noqa: F401, E402 - fixtures for forged snapshots
