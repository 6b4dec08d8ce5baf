"""Writes the template benchmark's SQL files again: ``python -m benchmarks.template_schema``."""

from benchmarks.template_schema import ROWS_TOTAL, SQL_FILES, TABLES, generate

generate()
print(f"wrote {', '.join(p.name for p in SQL_FILES)}: {TABLES} tables, {ROWS_TOTAL} rows")
