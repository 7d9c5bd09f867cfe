"""Alembic migrations of the server's database (applied at start-up by `server.db.run_migrations`)."""
