"""The soak's figures from its answers and checks, issue 19's targets with verdicts, and the table."""

from __future__ import annotations

from collections import Counter

from .report import aligned, seconds, summarize
from .soak_load import Answer, CycleResult

# What issue 19 asks of the load held; reported with a verdict, never asserted here.
WARM_CREATE_P99 = 0.100
RSS_GROWTH = 0.10


def figures(answers: list[Answer], results: list[CycleResult], pool_made: set[int], warm: list[str]) -> dict:
    """Latencies per backend (counted cycles only), answers by status (all), the checks' tallies."""
    counted = [r for r in results if r.cycle.counted]
    per_backend: dict[str, dict] = {}
    for backend in sorted({r.cycle.backend for r in counted}):
        mine = [r for r in counted if r.cycle.backend == backend]
        entry = {
            "cycles": len(mine),
            "create": summarize([r.create_s for r in mine if r.create_s is not None]),
            "login_write": summarize([r.login_write_s for r in mine if r.login_write_s is not None]),
            "delete": summarize([r.delete_s for r in mine if r.delete_s is not None]),
        }
        if backend in warm:
            # A create answered with a row that a pool made took a pooled instance over.
            taken = [r.create_s for r in mine if r.create_s is not None and r.instance_id in pool_made]
            entry["create_from_pool"] = summarize(taken)
            entry["create_not_from_pool"] = summarize(
                [r.create_s for r in mine if r.create_s is not None and r.instance_id not in pool_made]
            )
        per_backend[backend] = entry
    statuses = Counter(str(a.status) if a.status is not None else "no answer" for a in answers)
    by_what = Counter(f"{a.what} {a.status if a.status is not None else 'no answer'}" for a in answers)
    server_errors = [a for a in answers if a.status is None or a.status >= 500]
    bad = [r for r in results if r.cycle.bad]
    wrong = [r for r in results if r.cycle.wrong_password]
    return {
        "cycles": len(results),
        "counted_cycles": len(counted),
        "cycles_with_problems": sum(1 for r in results if r.problems),
        "requests": len(answers),
        "by_status": dict(sorted(statuses.items())),
        "by_request": dict(sorted(by_what.items())),
        "server_errors": [vars(a) for a in server_errors],
        "bad_requests": {
            "sent": len(bad),
            "as_expected": sum(1 for r in bad if r.bad_ok),
            "kinds": dict(Counter(r.cycle.bad for r in bad)),
        },
        "wrong_password_deletes": {"sent": len(wrong), "as_expected": sum(1 for r in wrong if r.wrong_password_ok)},
        "backends": per_backend,
        "problems": [f"cycle {r.cycle.index} ({r.cycle.backend}): {p}" for r in results for p in r.problems],
    }


def _target(key: str, text: str, shown: str, passed: bool | None, note: str = "") -> dict:
    return {"id": key, "text": text, "shown": shown, "passed": passed, "note": note}


def evaluate(results: dict) -> list[dict]:
    f = results["figures"]
    targets = []
    fives = f["server_errors"]
    counted = sum(v for k, v in results["server_metrics"].get("http_by_status", {}).items() if k.startswith("5"))
    targets.append(
        _target(
            "no_5xx",
            "responses 5xx (or none at all): 0",
            f"{len(fives)} of {f['requests']}",
            not fives and not counted,
            f"the server counted {counted:g} 5xx in /metrics",
        )
    )
    end, drained = results["at_end"], results.get("after_drain") or {}
    leaks = len(end["problems"]) + len(drained.get("problems", []))
    repairs = {k: v for k, v in results["server_metrics"].get("reaper_actions", {}).items() if "pool_trimmed" not in k}
    note = f"the reaper repaired: {repairs}" if repairs else ""
    targets.append(
        _target(
            "no_leak",
            "instances lost or leaked (rows and objects at the end, then drained): 0",
            f"{len(end['problems'])} at the end, {len(drained.get('problems', []))} after draining the pools",
            leaks == 0 and not repairs and drained.get("status") == "ok",
            note or ("" if drained.get("status") == "ok" else f"drain: {drained.get('status')}"),
        )
    )
    for backend in results["warm_backends"]:
        entry = f["backends"].get(backend) or {}
        pooled = entry.get("create_from_pool") or {}
        every = entry.get("create") or {}
        p99 = pooled.get("p99")
        note = f"{pooled.get('n', 0)} of {every.get('n', 0)} creates took a pooled instance"
        if every.get("n"):
            note += f"; p99 of all {every['n']}: {seconds(every.get('p99'))}"
        targets.append(
            _target(
                f"warm_create_p99_{backend}",
                f"p99 of a warm create ({backend}, POST -> 201) <= {WARM_CREATE_P99 * 1000:g} ms",
                seconds(p99),
                None if p99 is None else p99 <= WARM_CREATE_P99,
                note,
            )
        )
    for pid, worker in sorted(results["rss"]["workers"].items()):
        growth = worker.get("growth")
        shown = "-"
        if growth is not None:
            shown = (
                f"{growth * 100:+.1f}% ({worker['first_quarter_kb'] / 1024:.0f} -> "
                f"{worker['last_quarter_kb'] / 1024:.0f} MB)"
            )
        targets.append(
            _target(
                f"rss_growth_{pid}",
                f"worker {pid}: RSS growth, first to last quarter < {RSS_GROWTH * 100:g}%",
                shown,
                None if growth is None else growth < RSS_GROWTH,
                f"max {worker['max_kb'] / 1024:.0f} MB",
            )
        )
    if results["rss"]["workers_seen"] != results["rss"]["workers_at_start"]:
        targets.append(
            _target(
                "workers_kept",
                "gunicorn workers: none replaced during the run",
                f"{results['rss']['workers_at_start']} -> {results['rss']['workers_seen']}",
                False,
            )
        )
    bad, wrong = f["bad_requests"], f["wrong_password_deletes"]
    targets.append(
        _target(
            "bad_requests",
            "bad requests: the 4xx expected, a JSON body naming the field, nothing made or changed",
            f"{bad['as_expected']} of {bad['sent']}",
            bad["as_expected"] == bad["sent"] if bad["sent"] else None,
        )
    )
    targets.append(
        _target(
            "wrong_password",
            "wrong-password deletes: 401, the instance intact, then deleted",
            f"{wrong['as_expected']} of {wrong['sent']}",
            wrong["as_expected"] == wrong["sent"] if wrong["sent"] else None,
        )
    )
    targets.append(
        _target(
            "cycles_clean",
            "cycles with any problem (a create, login, write, check or delete that failed)",
            f"{f['cycles_with_problems']} of {f['cycles']}",
            f["cycles_with_problems"] == 0,
        )
    )
    return targets


def table(results: dict) -> str:
    f = results["figures"]
    rows = []
    for backend, entry in f["backends"].items():
        series = [("create POST->201", entry["create"]), ("login+write", entry["login_write"])]
        if "create_from_pool" in entry:
            series.insert(1, ("  from the pool", entry["create_from_pool"]))
            series.insert(2, ("  made anew", entry["create_not_from_pool"]))
        series.append(("delete", entry["delete"]))
        for label, s in series:
            rows.append(
                [
                    f"{backend} {label}",
                    seconds(s["p50"]),
                    seconds(s["p95"]),
                    seconds(s["p99"]),
                    seconds(s["max"]),
                    str(s["n"]),
                ]
            )
    out = aligned(["path (counted cycles)", "p50", "p95", "p99", "max", "n"], rows, {1, 2, 3, 4, 5})
    load = results["load"]
    out.append(
        f"{f['counted_cycles']} cycles (+{f['cycles'] - f['counted_cycles']} warm-up) by {load['clients']} clients "
        f"in {load['seconds']:.0f} s ({f['counted_cycles'] / max(load['seconds'], 1e-9):.1f} cycles/s); "
        f"{f['requests']} requests: " + ", ".join(f"{k} x{v}" for k, v in f["by_status"].items())
    )
    out.append("")
    rows = []
    for target in results["targets"]:
        mark = {True: "pass", False: "MISS", None: "n/a"}[target["passed"]]
        rows.append([target["text"], target["shown"], mark, target["note"]])
    out += aligned(["target (issue 19)", "figure", "verdict", "note"], rows, set())
    for problem in (results["at_end"]["problems"] + (results.get("after_drain") or {}).get("problems", []))[:20]:
        out.append(f"leak: {problem}")
    for problem in f["problems"][:20]:
        out.append(f"problem: {problem}")
    for answer in f["server_errors"][:10]:
        out.append(
            f"5xx: {answer['method']} {answer['path']} ({answer['what']}, {answer['backend']}) -> "
            f"{answer['status'] or answer['error']} [{answer['request_id']}]: {answer['body'][:200]}"
        )
    return "\n".join(out)
