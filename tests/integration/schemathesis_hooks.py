"""Schemathesis hooks for test_api_contract.py (loaded through SCHEMATHESIS_HOOKS).

A GET with ?wait=ready on a template left building holds its answer for the whole timeout, as
documented (up to 300 s), and the fuzzer leaves such templates behind on purpose. Waits drawn
longer than a few seconds are cut short here, so the run stays within its request timeout; what a
wait answers is tested in test_templates_api.py.
"""

from __future__ import annotations

from typing import Any

import schemathesis

LONGEST_WAIT_SECONDS = 3.0


@schemathesis.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if not query or "wait" not in query:
        return query
    try:
        timeout = float(query.get("timeout", 30))
    except (TypeError, ValueError):
        return query  # a bad value stays bad: the server must answer 400 for it
    if timeout > LONGEST_WAIT_SECONDS:
        query["timeout"] = LONGEST_WAIT_SECONDS
    return query
