"""The table of benchmarks/templates.py: every figure with issue 18's target and a verdict (pass, MISS,
n/a), reported, never asserted."""

from __future__ import annotations

from .report import seconds

# Issue 18's targets.
PER_TEST_RATIO = 0.5
POOL_201 = 0.015
COLD = {"local": 0.250, "docker": 0.7}
CLUSTER_VS_HAND_MADE = 1.5
ROW_BACKENDS = ("local", "cluster", "docker")


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else "pass" if met else "MISS"


def _row(figure: str, series: dict | None, compared: str = "", target: str = "", met: bool | None = None) -> list[str]:
    series = series or {}
    failures = f" ({series['failures']} failed)" if series.get("failures") else ""
    return [
        figure,
        seconds(series.get("p50")),
        seconds(series.get("p95")),
        f"{series.get('n', 0)}{failures}",
        compared,
        target,
        _verdict(met) if target else "",
    ]


def _na(figure: str, target: str, why: str) -> list[str]:
    # The reason, in full, is a note below the table.
    short = "ensure answered 400: no templates" if why.startswith("ensure answered 400") else why.split(" (")[0]
    return [figure, "n/a", "n/a", "0", short, target, "n/a"]


def _phases(suite: dict) -> str:
    phases = suite.get("phases_p50") or {}
    return "setup {} / call {} / teardown {}".format(*(seconds(phases.get(w)) for w in ("setup", "call", "teardown")))


def suite_rows(results: dict) -> list[list[str]]:
    suites = results.get("suites") or {}
    rows = []
    peer = suites.get("pytest-postgresql") or {}
    peer_p50 = (peer.get("per_test") or {}).get("p50")
    if peer:
        compared = f"{_phases(peer)}; first test {seconds(peer.get('first_s'))} (initdb + load), "
        compared += f"suite {seconds(peer.get('wall_s'))}"
        rows.append(_row("per test: pytest-postgresql (postgresql_proc + load)", peer.get("per_test"),
                         peer.get("error") and "failed: see the JSON" or compared))  # fmt: skip
    target = f"<= {PER_TEST_RATIO}x pytest-postgresql"
    for backend in ROW_BACKENDS:
        if f"postgraas {backend}" not in suites:
            if why := (results.get("unavailable") or {}).get(backend):
                rows.append(_na(f"per test: Postgraas {backend}", target, why))
            continue
        rows += [_suite_row(backend, suite, peer_p50, target) for key, suite in suites.items()
                 if key.split()[1:2] == [backend]]  # fmt: skip
    return rows


def _suite_row(backend: str, suite: dict, peer_p50: float | None, target: str) -> list[str]:
    figure = f"per test: Postgraas {backend} ({suite['via']}, pool {suite['pool_size']}"
    figure += ", deletes held to the end)" if suite.get("defer_deletes") else ")"
    per_test = suite.get("per_test") or {}
    if suite.get("error"):
        return _row(figure, per_test, "failed: see the JSON", target, False)
    ratio = per_test["p50"] / peer_p50 if peer_p50 and per_test.get("p50") else None
    build = suite["build_run"]
    compared = f"{ratio:.2f}x pytest-postgresql; " if ratio else ""
    compared += f"{_phases(suite)}; build run {seconds(build.get('wall_s'))}, suite {seconds(suite.get('wall_s'))}"
    return _row(figure, per_test, compared, target, None if ratio is None else ratio <= PER_TEST_RATIO)


def clone_rows(results: dict) -> list[list[str]]:
    rows = []
    pool_size = results["options"]["pool_size"]
    for backend in ROW_BACKENDS:
        clones = (results.get("clones") or {}).get(backend)
        why = (results.get("unavailable") or {}).get(backend)
        cold_target = (
            f"<= {CLUSTER_VS_HAND_MADE}x hand-made" if backend == "cluster" else f"<= {seconds(COLD[backend])}"
        )
        if clones is None:
            if why:
                rows.append(_na(f"clone {backend} pool {pool_size} POST->201", f"<= {seconds(POOL_201)}", why))
                rows.append(_na(f"clone {backend} cold POST->query", cold_target, why))
            continue
        pool = clones["pool"]
        p50 = pool["post_to_201"].get("p50")
        waits = pool.get("pool_wait") or {}
        compared = "pool never filled: see the notes" if waits.get("failures") else ""
        rows.append(_row(f"clone {backend} pool {pool_size} POST->201", pool["post_to_201"], compared,
                         f"<= {seconds(POOL_201)}", None if p50 is None else p50 <= POOL_201))  # fmt: skip
        rows.append(_row(f"clone {backend} pool {pool_size} POST->query", pool["post_to_query"]))
        cold = clones["cold"]
        rows.append(_row(f"clone {backend} cold POST->201", cold["post_to_201"]))
        p50 = cold["post_to_query"].get("p50")
        if backend == "cluster":
            hand = (clones.get("hand_made") or {}).get("p50")
            ratio = p50 / hand if p50 and hand else None
            compared = f"{ratio:.2f}x hand-made" if ratio else ""
            met = None if ratio is None else ratio <= CLUSTER_VS_HAND_MADE
        else:
            compared, met = "", None if p50 is None else p50 <= COLD[backend]
        rows.append(_row(f"clone {backend} cold POST->query", cold["post_to_query"], compared, cold_target, met))
        if "hand_made" in clones:
            rows.append(
                _row("hand-made CREATE ROLE + CREATE DATABASE TEMPLATE -> query (cluster)", clones["hand_made"])
            )
    return rows


def race_rows(results: dict) -> list[list[str]]:
    rows = []
    size = results["options"]["race"]
    for backend in ROW_BACKENDS:
        race = (results.get("race") or {}).get(backend)
        figure = f"{size} concurrent ensures {backend}: all ready"
        if race is None:
            if why := (results.get("unavailable") or {}).get(backend):
                rows.append(_na(figure, "one build", why))
            continue
        answers = ", ".join(f"{code} x{n}" for code, n in race["answers"].items())
        errors = f", {len(race['errors'])} failed" if race["errors"] else ""
        met = race["builds"] == 1 and not race["errors"]
        rows.append([figure, seconds(race["all_ready_s"]), "", str(race["size"]), answers + errors, "one build",
                     _verdict(met)])  # fmt: skip
    return rows


def notes(results: dict) -> list[str]:
    out = list(results.get("notes") or [])
    for backend, why in (results.get("unavailable") or {}).items():
        out.append(f"{backend}: n/a: {why}")
    for name, suite in (results.get("suites") or {}).items():
        filled = suite.get("pool_filled")
        if filled and not filled["reached"]:
            out.append(f"suite {name}: its pool held {filled['pooled']:g} after {filled['waited_s']:.0f} s, not full")
        if suite.get("error"):
            out.append(f"suite {name} failed: {suite['error'][-400:]}")
    for backend, clones in (results.get("clones") or {}).items():
        for error in (clones["pool"].get("pool_wait") or {}).get("errors", []):
            out.append(f"clone {backend} pool: {error} (pooled clones counted by /metrics' pooled instances)")
        for mode in ("cold", "pool"):
            for error in clones[mode]["post_to_201"].get("errors", [])[:2]:
                out.append(f"clone {backend} {mode} failed: {error.strip()}")
    for backend, race in (results.get("race") or {}).items():
        for error in race["errors"][:2]:
            out.append(f"race {backend}: {error.strip()}")
    return out


def table(results: dict) -> str:
    schema = results["schema"]
    header = ["figure", "p50", "p95", "n", "compared", "target", "verdict"]
    rows = [header, *suite_rows(results), *clone_rows(results), *race_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        f"schema: {schema['tables']} tables (primary keys, foreign keys, indexes), {schema['rows']} rows, "
        f"from {', '.join(schema['files'])} (hash {schema['hash']})",
        "",
    ]
    for n, row in enumerate(rows):
        cells = [cell.rjust(widths[i]) if i in (1, 2, 3) else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        "per test: setup + call + teardown of each test but the first (which starts the session's fixtures)"
        " and the last (which ends them), p50/p95"
    )
    lines += [f"note: {note}" for note in notes(results)]
    return "\n".join(lines)
