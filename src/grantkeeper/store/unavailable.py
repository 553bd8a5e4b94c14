"""Which exceptions mean "the database is unavailable right now" (retry, or answer 503).

Pool exhaustion (``sqlalchemy.exc.TimeoutError``), a dropped or refused connection, a
locked SQLite file, a PostgreSQL restart: none is a bug of ours, and none may become a
500. ``DB_ERRORS`` is what a write that must not be lost retries on; ``UNAVAILABLE``
is what the API answers with 503 ``store_unavailable``.
"""

from __future__ import annotations

from asyncpg.exceptions import (
    InterfaceError as PgInterfaceError,
)
from asyncpg.exceptions import (
    OperatorInterventionError,
    PostgresConnectionError,
)
from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import (
    TimeoutError as PoolTimeout,
)

__all__ = ["DB_ERRORS", "UNAVAILABLE"]

#: everything a must-not-lose write retries on (any database or pool error)
DB_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    PostgresConnectionError,
    OperatorInterventionError,
    PgInterfaceError,
    ConnectionError,
    TimeoutError,
)

#: what the API maps to 503 store_unavailable (never a 500)
UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
    PostgresConnectionError,
    OperatorInterventionError,
    PgInterfaceError,
    ConnectionError,
)
