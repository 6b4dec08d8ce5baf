"""Figures from samples, the issue's targets, and the three outputs: a table, a JSON document, a PNG chart."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

# What issue 7 asks for; the benchmark reports against them, it does not fail on them.
DOCKER_VS_DOCKER_RUN = 0.7
WARM_POST_TO_201 = 0.015
CLUSTER_COLD = 0.060
LOCAL_COLD = 0.250
BURST_SIZE, BURST_WALL = 20, 8.0
LIST_ROWS, LIST_P50 = 1000, 0.025

PEER_NAMES = {
    "docker_run": "plain docker run",
    "testcontainers": "testcontainers",
    "initdb_pg_ctl": "initdb+pg_ctl",
    "create_database": "CREATE DATABASE",
}


def percentile(samples: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), defined for any n >= 1."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(samples: list[float]) -> dict:
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p95": percentile(samples, 95),
        "p99": percentile(samples, 99),
        "min": min(samples) if samples else None,
        "max": max(samples) if samples else None,
        "mean": sum(samples) / len(samples) if samples else None,
    }


@dataclass
class Series:
    """Timings of one path in seconds, and why the runs that gave none failed."""

    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {**summarize(self.samples), "failures": len(self.errors), "errors": self.errors, "samples": self.samples}


# --- targets --------------------------------------------------------------------------------------------------


def _get(results: dict, *keys: str) -> dict | None:
    node = results
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _p50(results: dict, *keys: str) -> float | None:
    node = _get(results, *keys)
    return node.get("p50") if node else None


def _target(
    key: str, row: str, text: str, short: str, value: float | None, limit: float, note: str | None = None
) -> dict:
    passed = None if value is None or note else value <= limit
    return {
        "id": key,
        "row": row,
        "text": text,
        "short": short,
        "value": value,
        "limit": limit,
        "passed": passed,
        "note": note,
    }


def evaluate_targets(results: dict) -> list[dict]:
    docker_cold = _p50(results, "postgraas", "cold", "backends", "docker", "post_to_query")
    docker_run = _p50(results, "peers", "docker_run")
    ratio = docker_cold / docker_run if docker_cold and docker_run else None
    targets = [
        _target(
            "docker_cold_vs_docker_run",
            "postgraas.cold.docker.query",
            f"docker cold p50 <= {DOCKER_VS_DOCKER_RUN}x plain docker run p50",
            f"<= {DOCKER_VS_DOCKER_RUN}x docker run",
            ratio,
            DOCKER_VS_DOCKER_RUN,
        ),
        _target(
            "docker_warm_post_to_201",
            "postgraas.warm.docker.201",
            f"docker warm POST->201 p50 <= {WARM_POST_TO_201 * 1000:g} ms",
            f"<= {WARM_POST_TO_201 * 1000:g} ms",
            _p50(results, "postgraas", "warm", "backends", "docker", "post_to_201"),
            WARM_POST_TO_201,
        ),
        _target(
            "local_warm_post_to_201",
            "postgraas.warm.local.201",
            f"local warm POST->201 p50 <= {WARM_POST_TO_201 * 1000:g} ms",
            f"<= {WARM_POST_TO_201 * 1000:g} ms",
            _p50(results, "postgraas", "warm", "backends", "local", "post_to_201"),
            WARM_POST_TO_201,
        ),
        _target(
            "cluster_cold",
            "postgraas.cold.cluster.query",
            f"cluster cold p50 <= {CLUSTER_COLD * 1000:g} ms",
            f"<= {CLUSTER_COLD * 1000:g} ms",
            _p50(results, "postgraas", "cold", "backends", "cluster", "post_to_query"),
            CLUSTER_COLD,
        ),
        _target(
            "local_cold",
            "postgraas.cold.local.query",
            f"local cold p50 <= {LOCAL_COLD * 1000:g} ms",
            f"<= {LOCAL_COLD * 1000:g} ms",
            _p50(results, "postgraas", "cold", "backends", "local", "post_to_query"),
            LOCAL_COLD,
        ),
    ]
    burst = _get(results, "burst", "cold", "docker")
    note = None
    if burst and burst["size"] != BURST_SIZE:
        note = f"burst of {burst['size']}; the target is for {BURST_SIZE}"
    target = _target(
        "burst_docker",
        "burst.cold.docker",
        f"burst of {BURST_SIZE} docker creates all ready within {BURST_WALL:g} s, none failed",
        f"x{BURST_SIZE} all ready <= {BURST_WALL:g} s, 0 failed",
        burst["wall_s"] if burst else None,
        BURST_WALL,
        note,
    )
    if burst and burst["failures"] and not note:
        target.update(passed=False, note=f"{burst['failures']} failed")
    targets.append(target)
    listing = _get(results, "list")
    note = None
    if listing and listing.get("rows") != LIST_ROWS:
        note = f"{listing.get('rows')} instances; the target is for {LIST_ROWS}"
    targets.append(
        _target(
            "list_p50",
            "list.get",
            f"GET list with {LIST_ROWS} instances p50 <= {LIST_P50 * 1000:g} ms",
            f"{LIST_ROWS} instances, p50 <= {LIST_P50 * 1000:g} ms",
            _p50(results, "list", "get"),
            LIST_P50,
            note,
        )
    )
    return targets


# --- rows: one per timed path, shared by the table and the chart -------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    kind: str
    figures: dict
    compare: str = ""
    target: str = ""


def _ratio(value: float | None, peer: float | None, name: str) -> str | None:
    return f"{value / peer:.2f}x {name}" if value and peer else None


def build_rows(results: dict) -> list[Row]:
    peers = results.get("peers") or {}
    peer_p50 = {name: (peers.get(name) or {}).get("p50") for name in PEER_NAMES}
    rows: list[Row] = []
    for mode in ("cold", "warm"):
        section = _get(results, "postgraas", mode)
        if not section or section.get("status") != "ok":
            continue
        for backend, figures in section["backends"].items():
            for metric, short in (("post_to_query", "query"), ("post_to_201", "201")):
                series = figures[metric]
                compare = []
                if metric == "post_to_query" and backend == "docker":
                    compare = [_ratio(series["p50"], peer_p50["docker_run"], "docker run")]
                    compare.append(_ratio(series["p50"], peer_p50["testcontainers"], "testcontainers"))
                elif metric == "post_to_query" and backend == "local":
                    compare = [_ratio(series["p50"], peer_p50["initdb_pg_ctl"], "initdb+pg_ctl")]
                elif metric == "post_to_query" and backend == "cluster":
                    compare = [_ratio(series["p50"], peer_p50["create_database"], "CREATE DATABASE")]
                elif metric == "post_to_query":
                    compare = ["absolute"]
                label = f"postgraas {backend} {mode} POST->{'query' if short == 'query' else '201'}"
                rows.append(
                    Row(f"postgraas.{mode}.{backend}.{short}", label, mode, series, ", ".join(c for c in compare if c))
                )
    for name, label in PEER_NAMES.items():
        if name in peers:
            rows.append(Row(f"peer.{name}", f"peer {label}", "peer", peers[name]))
    for mode, bursts in (results.get("burst") or {}).items():
        for backend, burst in bursts.items():
            figures = {**burst["per_instance"], "failures": burst["failures"]}
            compare = f"all {burst['size']} done in {burst['wall_s']:.2f} s"
            rows.append(
                Row(f"burst.{mode}.{backend}", f"burst {backend} {mode} x{burst['size']}", "burst", figures, compare)
            )
    listing = results.get("list") or {}
    if "get" in listing:
        rows.append(Row("list.get", f"GET list, {listing['rows']} instances", "list", listing["get"]))
    for target in results.get("targets", []):
        for row in rows:
            if row.key == target["row"]:
                mark = {True: "pass", False: "MISS", None: "n/a"}[target["passed"]]
                row.target = f"{mark} {target['short']}" + (f" ({target['note']})" if target["note"] else "")
    return rows


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.1:
        return f"{value * 1000:.1f} ms"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def aligned(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """The rows under the header as text columns (those in ``right`` right-aligned), a rule below the header."""
    table = [header, *rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    out = []
    for n, line in enumerate(table):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(line)]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def table(results: dict) -> str:
    header = ["path", "p50", "p95", "p99", "n", "fail", "compared", "target"]
    lines = [header]
    for row in build_rows(results):
        f = row.figures
        lines.append(
            [
                row.label,
                seconds(f.get("p50")),
                seconds(f.get("p95")),
                seconds(f.get("p99")),
                str(f.get("n", 0)),
                str(f.get("failures", 0)),
                row.compare,
                row.target,
            ]
        )
    out = aligned(header, lines[1:], {1, 2, 3, 4, 5})
    for mode in ("cold", "warm"):
        section = _get(results, "postgraas", mode)
        if section and section.get("status") != "ok":
            out.append(f"{mode}: {section.get('status')}: {section.get('error')}")
    out.append("targets (issue 7):")
    for target in results.get("targets", []):
        mark = {True: "pass", False: "MISS", None: "n/a "}[target["passed"]]
        value = target["value"]
        if value is None:
            shown = "not measured"
        else:
            shown = f"{value:.2f}x" if target["id"].endswith("docker_run") else seconds(value)
        note = f" ({target['note']})" if target["note"] else ""
        out.append(f"  {mark}  {target['text']}: {shown}{note}")
    return "\n".join(out)


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def write_png(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [row for row in build_rows(results) if row.figures.get("p50") is not None]
    colors = {"cold": "tab:blue", "warm": "tab:orange", "peer": "tab:green", "burst": "tab:red", "list": "tab:purple"}
    p50 = [row.figures["p50"] for row in rows]
    p95 = [row.figures.get("p95") or row.figures["p50"] for row in rows]
    fig, ax = plt.subplots(figsize=(11, 0.38 * len(rows) + 1.8))
    positions = range(len(rows))
    ax.barh(
        positions,
        p50,
        xerr=[[0] * len(rows), [high - low for low, high in zip(p50, p95, strict=True)]],
        color=[colors[row.kind] for row in rows],
        capsize=3,
    )
    ax.set_yticks(list(positions), [row.label for row in rows], fontsize=8)
    ax.invert_yaxis()
    # Milliseconds (a warm 201, a list) and seconds (a container) on one axis need a log scale.
    if p50 and max(p95) / max(min(p50), 1e-6) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("seconds (bar: p50, whisker: p95)")
    kinds = dict.fromkeys(row.kind for row in rows)
    ax.legend(handles=[Patch(color=colors[kind], label=kind) for kind in kinds], loc="lower right", fontsize=8)
    machine = results.get("machine", {})
    ax.set_title(
        f"Postgraas create latency vs peers - {machine.get('date', '')[:16]}, "
        f"{machine.get('cpu_count')} CPUs, commit {str(machine.get('git_commit', ''))[:10]}",
        fontsize=10,
    )
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
