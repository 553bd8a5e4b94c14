"""Which exceptions mean "the database is unavailable right now" (retry, or answer 503).

Pool exhaustion (``sqlalchemy.exc.TimeoutError``), a dropped or refused connection, a
locked SQLite file, a PostgreSQL restart: none is a bug of ours, and none may become a
500. ``DB_ERRORS`` is what a write that must not be lost retries on; ``UNAVAILABLE``
is what the API answers with 503 ``store_unavailable`` (``is_unavailable`` also
recognises the asyncpg errors SQLAlchemy passes on as a bare ``DBAPIError``).
"""

from __future__ import annotations

from asyncpg.exceptions import (
    InsufficientResourcesError,
    OperatorInterventionError,
    PostgresConnectionError,
)
from asyncpg.exceptions import (
    InterfaceError as PgInterfaceError,
)
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import (
    TimeoutError as PoolTimeout,
)

__all__ = ["DB_ERRORS", "UNAVAILABLE", "is_unavailable"]

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

#: driver errors that mean "the server is going away, restarting or full", whatever
#: SQLAlchemy class they arrive wrapped in
_DRIVER_UNAVAILABLE: tuple[type[BaseException], ...] = (
    PostgresConnectionError,
    OperatorInterventionError,  # 57P01 admin shutdown, 57P03 cannot connect now
    InsufficientResourcesError,  # 53300 too many connections
    PgInterfaceError,
    ConnectionError,
    OSError,
)


def is_unavailable(exc: BaseException) -> bool:
    """The database is unavailable right now (answer 503 ``store_unavailable``).

    SQLAlchemy's asyncpg dialect maps only some asyncpg errors to its classes: a query
    cut by a restart (57P01) or a connection refused while the server starts (57P03)
    arrives as a bare ``DBAPIError``, which is no ``OperationalError``.
    """
    if isinstance(exc, UNAVAILABLE):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        return isinstance(orig, _DRIVER_UNAVAILABLE) or isinstance(
            getattr(orig, "__cause__", None), _DRIVER_UNAVAILABLE
        )
    return False
