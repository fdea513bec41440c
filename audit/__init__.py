"""The audit trail's storage: what happened to every bot command, every revocation, every admin action.

``records`` holds the rows as frozen dataclasses and the redaction (pure);
``store`` the two backends behind one protocol (SQLite, the embedded
default under DATA_DIR, and PostgreSQL for production) with their versioned
migrations in ``migrations/``; ``writer`` the :class:`~audit.writer.AuditLog`
the gateway talks to (never blocks the event loop, holds records while the
database is down); ``cli`` the ``trading-gateway audit`` command.

This package sits beside ``brokers/`` in the layers (tests/test_layers.py):
it imports only ``protocol``, ``metrics``, the standard library and its
drivers, never ``gateway``; settings come in as arguments.
"""
