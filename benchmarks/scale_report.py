"""The table and the plot of benchmarks/scale.py: every figure by size and meta db, with issue 19's
targets and a verdict (pass, MISS, n/a), reported, never asserted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .report import aligned, seconds

# Issue 19's targets.
FLAT_RATIO = 1.5
REAPER_PASS_S = 2.0
METRICS_S = 0.050
WORKER_MB = 300.0
ISSUE_SIZES = (1000, 100_000)


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    # "flat": within FLAT_RATIO of the smallest size's p50 at the largest; "metrics": METRICS_S at
    # the largest; "reaper": REAPER_PASS_S at the largest and at most linear growth.
    target: str | None = None


FIGURES = (
    Figure("page_owner", "page of 100, owner token", "flat"),
    Figure("page_admin", "page of 100, admin token", "flat"),
    Figure("list", "whole list, admin token"),
    Figure("item_get", "item GET", "flat"),
    Figure("create", "warm create POST->201", "flat"),
    Figure("delete", "delete"),
    Figure("metrics", "/metrics scrape", "metrics"),
    Figure("reaper_idle", "reaper pass, nothing to do", "reaper"),
    Figure("reaper_expired", "reaper pass, 1% expired", "reaper"),
    # Not part of the pass: the removals it queued run after it, a few at once (Removals).
    Figure("reaper_removals", "reaper: 1% expired removed, after that pass"),
)


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else "pass" if met else "MISS"


def _size_text(size: int) -> str:
    return f"{size:,}"


def _label(figure: Figure, measured: dict) -> str:
    label = figure.label
    if figure.key.startswith("page") and measured.get("items") is not None and not measured.get("limit_honoured"):
        # Until the server knows ``limit`` it answers the whole list: say so, it is no page.
        label = f"GET ?limit=100, {label.split(', ')[1]} (limit ignored: {measured['items']:,} rows answered)"
    if figure.key == "list" and measured.get("items") is not None:
        label += f" ({measured['items']:,} rows)"
    details = []
    if figure.key in ("reaper_expired", "reaper_removals") and measured.get("expired") is not None:
        details.append(f"{measured['expired']:,} expired")
    if measured.get("cpu_p50") is not None:
        # The pass's CPU in the benchmark's process: less moved than its time by other load.
        details.append(f"CPU {seconds(measured['cpu_p50'])}")
    return f"{label} ({', '.join(details)})" if details else label


def _target(figure: Figure, sizes: list[int], size: int, by_size: dict) -> tuple[str, bool | None]:
    """The target text and verdict of ``figure`` at ``size``; only the largest size is judged."""
    smallest, largest = sizes[0], sizes[-1]
    if figure.target is None or size != largest or len(sizes) < 2:
        return "", None
    first = (by_size.get(str(smallest)) or {}).get(figure.key) or {}
    last = (by_size.get(str(largest)) or {}).get(figure.key) or {}
    p50_first, p50_last = first.get("p50"), last.get("p50")
    if figure.target == "flat":
        text = f"<= {FLAT_RATIO}x {_size_text(smallest)}-row p50"
        if figure.key.startswith("page") and not last.get("limit_honoured"):
            return text + " (the server does not page yet)", None
        if not p50_first or p50_last is None:
            return text, None
        ratio = p50_last / p50_first
        return f"{text}: {ratio:.2f}x", ratio <= FLAT_RATIO
    if figure.target == "metrics":
        return f"<= {METRICS_S * 1000:g} ms", None if p50_last is None else p50_last <= METRICS_S
    if p50_last is None or not p50_first:
        return f"<= {REAPER_PASS_S:g} s, at most linear", None
    growth, rows = p50_last / p50_first, largest / smallest
    text = f"<= {REAPER_PASS_S:g} s; {growth:.1f}x for {rows:g}x rows"
    return text, p50_last <= REAPER_PASS_S and growth <= rows


def _memory_row(kind: str, size: int, figures: dict) -> list[str]:
    memory = figures.get("memory") or {}
    worst, after = None, ""
    for measured_after, workers in memory.items():
        for mb in workers.values():
            if mb is not None and (worst is None or mb > worst):
                worst, after = mb, measured_after
    shown = f"{worst:.0f} MB" if worst is not None else "-"
    met = None if worst is None else worst <= WORKER_MB
    label = f"worker RSS, highest (after {after})" if after else "worker RSS, highest"
    return [label, _size_text(size), kind, shown, "", "", "", f"<= {WORKER_MB:g} MB", _verdict(met)]


def table(results: dict) -> str:
    header = ["figure", "size", "metadb", "p50", "p95", "p99", "n", "target", "verdict"]
    lines = [header]
    for kind, run in (results.get("runs") or {}).items():
        by_size = run.get("sizes") or {}
        sizes = sorted(int(size) for size in by_size)
        for figure in FIGURES:
            for size in sizes:
                measured = by_size[str(size)].get(figure.key)
                if measured is None:
                    continue
                target, met = _target(figure, sizes, size, by_size)
                failures = f" ({measured['failures']} failed)" if measured.get("failures") else ""
                lines.append([
                    _label(figure, measured), _size_text(size), kind, seconds(measured.get("p50")),
                    seconds(measured.get("p95")), seconds(measured.get("p99")), f"{measured.get('n', 0)}{failures}",
                    target, _verdict(met) if target else "",
                ])  # fmt: skip
        for size in sizes:
            lines.append(_memory_row(kind, size, by_size[str(size)]))
    out = aligned(header, lines[1:], {1, 3, 4, 5, 6})
    for kind, run in (results.get("runs") or {}).items():
        if run.get("error"):
            out.append(f"{kind}: failed: {run['error']}")
    sizes = sorted({int(s) for run in (results.get("runs") or {}).values() for s in run.get("sizes") or {}})
    if sizes and (sizes[0], sizes[-1]) != ISSUE_SIZES:
        out.append(
            f"note: sizes {', '.join(map(_size_text, sizes))}: the issue's targets are for 1,000 -> 100,000 rows"
        )
    return "\n".join(out)


def write_png(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    runs = results.get("runs") or {}
    sizes = sorted({int(size) for run in runs.values() for size in run.get("sizes") or {}})
    styles = {"sqlite": "-", "postgresql": "--"}
    panels = (
        ("HTTP, p50 (s)", [f for f in FIGURES if not f.key.startswith("reaper")], None),
        ("the reaper, p50 (s)", [f for f in FIGURES if f.key.startswith("reaper")], REAPER_PASS_S),
    )
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5))
    for ax, (title, figures, limit) in zip(axes, panels, strict=False):
        for n, figure in enumerate(figures):
            for kind, run in runs.items():
                by_size = run.get("sizes") or {}
                points = [(s, (by_size.get(str(s), {}).get(figure.key) or {}).get("p50")) for s in sizes]
                points = [(s, v) for s, v in points if v]
                if points:
                    ax.plot(*zip(*points, strict=True), styles.get(kind, ":"), marker="o", color=f"C{n}")
        handles = [Line2D([], [], color=f"C{n}", label=f.label) for n, f in enumerate(figures)]
        if limit is not None:
            ax.axhline(limit, color="red", linewidth=0.8)
            handles.append(Line2D([], [], color="red", linewidth=0.8, label=f"target {limit:g} s"))
        handles += [Line2D([], [], color="gray", linestyle=style, label=kind) for kind, style in styles.items()]
        ax.set(xscale="log", yscale="log", xlabel="rows in the meta db", title=title)
        ax.grid(which="both", alpha=0.3)
        ax.legend(handles=handles, fontsize=7)
    memory_ax = axes[2]
    for kind, run in runs.items():
        by_size = run.get("sizes") or {}
        points = [
            (s, max((mb for w in (by_size[str(s)].get("memory") or {}).values() for mb in w.values() if mb), default=0))
            for s in sizes
            if str(s) in by_size
        ]
        if points:
            memory_ax.plot(*zip(*points, strict=True), styles.get(kind, ":"), marker="o", color="C0", label=kind)
    memory_ax.axhline(WORKER_MB, color="red", linewidth=0.8, label=f"target {WORKER_MB:g} MB")
    memory_ax.set(xscale="log", xlabel="rows in the meta db", ylabel="MB", title="highest worker RSS after any figure")
    memory_ax.set_ylim(bottom=0)
    memory_ax.grid(which="both", alpha=0.3)
    memory_ax.legend(fontsize=7)
    machine = results.get("machine") or {}
    dirty = " (uncommitted changes)" if machine.get("git_dirty") else ""
    fig.suptitle(
        f"Postgraas cost against meta-db size - {str(machine.get('date', ''))[:16]}, {machine.get('cpu_count')} CPUs, "
        f"commit {str(machine.get('git_commit', ''))[:10]}{dirty}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
