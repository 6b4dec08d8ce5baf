"""The peer: pytest-postgresql's own ``postgresql_proc`` (a PostgreSQL server of the session, from
--postgresql-exec) with --postgresql-load (the SQL files go into its template database once), and its
``postgresql`` fixture, a database made from that template for each test and dropped after it.
benchmarks/templates.py passes the options; nothing more is needed here."""
