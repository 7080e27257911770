"""Server state (users, login sessions, preferences, settings) in SQLAlchemy; SQLite by default."""
