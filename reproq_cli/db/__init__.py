"""The database layer: the only code that talks to PostgreSQL (psycopg 3)."""
