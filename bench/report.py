"""What a run leaves: a plain-text table on stdout, ``results.json`` and ``results.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import cpu_accounting
from bench.analysis import RATES
from bench.scenarios.inprocess import ST_PREFIX

WIDTH = 100


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _batch_label(key: object) -> str:
    """``"64"`` -> ``batch 64``; ``"64 x2"`` (two single-threaded calls side by side) ->
    ``batch 64 x 2 side by side``; ``"st encode 64 x2"`` -> ``sentence-transformers encode,
    batch 64 x 2`` (kept within the table's label column)."""
    text = str(key)
    size, _, calls = text.removeprefix(ST_PREFIX).partition(" x")
    if text.startswith(ST_PREFIX):
        return f"sentence-transformers encode, batch {size}" + (f" x {calls}" if calls else "")
    return f"batch {size} x {calls} side by side" if calls else f"batch {size}"


def _inprocess_label(key: str) -> str:
    """A by_batch row's label: the runner's rows say in-process, encode's say whose they are."""
    label = _batch_label(key)
    return label if key.startswith(ST_PREFIX) else f"in-process, {label}"


def _measured_row(label: str, entry: dict[str, Any], unit: str, limit: float | None) -> str:
    """One measurement: items, seconds, rate and its share of the limit (or its error)."""
    if entry.get("status", "ok") != "ok":
        status = str(entry.get("status")).upper()
        return f"{label:<44} {status}: {str(entry.get('error'))[:WIDTH - 60]}"
    share = f"{entry['per_s'] / limit:8.0%}" if limit else f"{'':>8}"
    return (f"{label:<44}{entry['items']:>8,}{entry['seconds']:>9.2f}"
            f"{entry['per_s']:>11,.1f} {unit:<6}{share}")


def _throughput_rows(results: dict[str, Any], limit: float | None) -> list[str]:
    rows: list[str] = []

    def add(label: str, entry: Any, unit: str, vs_limit: bool = True) -> None:
        if isinstance(entry, dict):
            rows.append(_measured_row(label, entry, unit, limit if vs_limit else None))

    inproc = results.get("inprocess")
    if isinstance(inproc, dict) and inproc.get("status", "ok") == "ok":
        for size, row in inproc["by_batch"].items():
            add(_inprocess_label(size), {**row, "items": inproc["items"]}, "sent/s")
        rows.append(f"{'  => in-process limit (' + _batch_label(inproc['best_batch']) + ')':<44}"
                    f"{'':>17}{inproc['per_s']:>11,.1f} sent/s{1:8.0%}")
    else:
        add("in-process limit", inproc, "sent/s")
    add("aidist packed: client.map", results.get("packed"), "sent/s")
    single = results.get("single")
    threads = single.get("producers", "?") if isinstance(single, dict) else "?"
    add(f"aidist single-message: infer x {threads} threads", single, "sent/s")
    add("naive Celery: 1 task/sentence, prefork 2", results.get("naive"), "sent/s")
    batches = results.get("batches")
    label = "celery-batches"
    if isinstance(batches, dict) and "flush_every" in batches:
        label += f" (flush {batches['flush_every']}/{batches['flush_interval_s']}s)"
    add(label, batches, "sent/s")
    tiny = results.get("tiny", {})
    add("tiny jobs: aidist normalize (client.map)", tiny.get("aidist"), "jobs/s", False)
    add("tiny jobs: bare Celery normalize (group)", tiny.get("celery"), "jobs/s", False)
    rows += _events_rows(results.get("events"), limit)
    rows += _bigtable_rows(results.get("bigtable"))
    scaled = results.get("autoscale")
    if isinstance(scaled, dict) and scaled.get("status", "ok") == "ok":
        auto, fixed = scaled["autoscaled"], scaled["fixed"]
        rows.append(f"{'autoscale --min 0 --max ' + str(scaled['max_workers']):<44}"
                    f"{scaled['items']:>8,}{auto['drain_s']:>9.2f}{auto['per_s']:>11,.1f} jobs/s"
                    f"  first job running {auto['first_running_s']:.1f}s, "
                    f"{auto['peak_desired']:g} workers ready at {auto['desired_ready_s']}s, "
                    f"back to 0 after {auto['back_to_zero_s']:.0f}s")
        rows.append(f"{'  fixed pool of ' + str(scaled['max_workers']) + ' warm workers':<44}"
                    f"{scaled['items']:>8,}{fixed['drain_s']:>9.2f}{fixed['per_s']:>11,.1f} jobs/s"
                    f"  drain autoscaled / fixed = {scaled['drain_vs_fixed']}")
    elif isinstance(scaled, dict):
        rows.append(f"{'autoscale':<44} ERROR: {str(scaled.get('error'))[:WIDTH - 60]}")
    return rows


def _events_rows(events: Any, limit: float | None) -> list[str]:
    """The events scenario: packed and single-message with task events on and off."""
    if not isinstance(events, dict):
        return []
    if events.get("status", "ok") != "ok":
        return [_measured_row("task events on vs off", events, "", None)]
    header = (f"task events on vs off: fresh workers per phase, best of {events['rounds']}, "
              f"order {' '.join(events['order'])}")
    return [header[:WIDTH], *(
        _measured_row(f"  {label}, events {side}", events[side][api], "sent/s", limit)
        for api, label in (("packed", "packed: client.map"),
                           ("single", "single-message: infer"))
        for side in ("on", "off"))]


BIGTABLE_ROWS = (("map_per_s", "map: client.map toy-classifier", "jobs/s"),
                 ("single_per_s", "single: infer + result, one at a time", "jobs/s"),
                 ("store_submit_per_s", "store: insert + mark_sent x 128", "jobs/s"),
                 ("store_work_per_s", "store: claim + finish x 128", "jobs/s"))


def _bigtable_rows(big: Any) -> list[str]:
    """The bigtable scenario: each rate on the empty and on the big table, and big / empty."""
    if not isinstance(big, dict):
        return []
    if big.get("status", "ok") != "ok":
        return [_measured_row("bigtable", big, "", None)]
    scans = ", ".join(big["table_scans"]) or "none"
    rows = [f"bigtable: empty vs {big['rows']:,} finished jobs (loaded in {big['load_s']:.0f}s)"
            f"{'empty':>14}{'big':>10}{'big/empty':>11}",
            ]
    for key, label, unit in BIGTABLE_ROWS:
        rows.append(f"  {label:<42}{big['empty'][key]:>9,.1f}{big['big'][key]:>10,.1f} "
                    f"{unit:<6}{big['ratios'].get(key, 0.0):>6.2f}")
    rows.append(f"  {'single p50 ms, empty / big':<42}{big['empty']['single_p50_ms']:>9.2f}"
                f"{big['big']['single_p50_ms']:>10.2f}")
    rows.append(f"  hot statements scanning a whole table (EXPLAIN): {scans}"[:WIDTH])
    return rows


def _latency_rows(results: dict[str, Any]) -> list[str]:
    latency = results.get("latency")
    if not isinstance(latency, dict):
        return []
    if latency.get("status", "ok") != "ok":
        return [f"{'latency':<44} ERROR: {str(latency.get('error'))[:WIDTH - 52]}"]
    rows = [f"{'latency (ms), one job at a time':<44}{'n':>8}{'p50':>9}{'p90':>9}{'p99':>9}"
            f"{'max':>9}"]
    bare = results.get("latency_celery")
    shown = [(latency, "miss", "  toy-classifier, submit -> result"),
             (latency, "hit", "  same inputs again (cache hits)"),
             (latency, "minilm", "  minilm, one sentence: infer -> result"),
             (results.get("inprocess"), "one_at_a_time", "  minilm, the same: the model alone"),
             (latency, "normalize", "  normalize op: aidist preprocess -> result"),
             (bare, "normalize", "  normalize op: bare Celery delay().get()")]
    for entry, key, label in shown:
        if not isinstance(entry, dict):
            continue
        if entry.get("status", "ok") != "ok":
            rows.append(f"{label:<44} ERROR: {str(entry.get('error'))[:WIDTH - 52]}")
        elif key in entry:
            row = entry[key]
            rows.append(f"{label:<44}{row['n']:>8}{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}"
                        f"{row['p99_ms']:>9.2f}{row['max_ms']:>9.2f}")
    added = queue_added_ms(results)
    if added is not None:
        rows.append(f"{'  minilm p50: what the queue adds':<44}{'':>8}{added:>9.2f}")
    return rows


def queue_added_ms(results: dict[str, Any]) -> float | None:
    """aidist's one-at-a-time minilm p50 minus the model's own on the same sentences."""
    try:
        return (float(results["latency"]["minilm"]["p50_ms"])
                - float(results["inprocess"]["one_at_a_time"]["p50_ms"]))
    except (KeyError, TypeError):
        return None


def _cpu_rows(results: dict[str, Any]) -> list[str]:
    """µs of CPU per tiny job of each process group, aidist next to bare Celery (the repeat with
    the lowest total of each side)."""
    tiny = results.get("tiny", {})
    sides = {side: tiny[side]["cpu_us_per_job"] for side in ("aidist", "celery")
             if isinstance(tiny.get(side), dict) and "cpu_us_per_job" in tiny[side]}
    if not sides:
        return []
    rows = [f"{'tiny jobs CPU/job (µs, user+sys)':<44}{'aidist':>10}{'bare Celery':>13}"
            f"{'bare/aidist':>13}"]
    labels = {"postgres_all": "postgres, every database"}
    for group in (*cpu_accounting.GROUPS[:-1], "total", "other", *cpu_accounting.ASIDE):
        values = [sides.get(side, {}).get(group) for side in ("aidist", "celery")]
        ratio = (f"{values[1] / values[0]:>13.1f}" if None not in values and values[0]
                 else f"{'-':>13}")
        label = f"tiny jobs CPU/job: {labels.get(group, group)}"
        rows.append(f"{label:<44}{_num(values[0]):>10}{_num(values[1]):>13}{ratio}")
    rows.append("  (other, postgres every database: not in total; services are shared with the "
                "machine's other work)")
    return [*rows, "-" * WIDTH]


def table(doc: dict[str, Any]) -> str:
    """The run as text: absolute numbers, ratios, and each target's PASS/MISS."""
    meta, results, analysis = doc["meta"], doc["results"], doc["analysis"]
    limit = analysis["rates_per_s"].get("limit")
    busy = meta.get("cpu_busy_before")
    lines = [
        "=" * WIDTH,
        f"aidist bench {meta['started']}  {'quick' if meta['quick'] else 'full'}, "
        f"best of {meta.get('repeats', 1)}  "
        f"{meta['cpus']} cores  load before {meta['load_before']}  after {meta.get('load_after')}"
        f"  CPU busy before {_num(None if busy is None else busy * 100, 0)}%",
        "=" * WIDTH,
        f"{'scenario':<44}{'items':>8}{'seconds':>9}{'per second':>11}{'':7}{'vs limit':>8}",
        "-" * WIDTH,
        *_throughput_rows(results, limit),
        "-" * WIDTH,
        *_cpu_rows(results),
        *_latency_rows(results),
        "-" * WIDTH,
        f"{'ratio (same run)':<60}{'value':>10}",
    ]
    for ratio in analysis["ratios"]:
        lines.append(f"{ratio['name']:<60}{_num(ratio['value'], 2):>10}")
    lines += ["-" * WIDTH, f"{'target (from the issue)':<60}{'measured':>10}{'goal':>12}  result"]
    for target in analysis["targets"]:
        goal = f"{target['op']} {target['goal']:g}{target['unit']}"
        lines.append(f"{target['name']:<60}{_num(target['measured'], 2):>10}{goal:>12}  "
                     f"{target['verdict']}")
    lines.append(_busy_note(meta))
    for name, error in doc.get("errors", {}).items():
        lines.append(f"error in {name}: {error}")
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def _busy_note(meta: dict[str, Any]) -> str:
    cpu = meta.get("cpu") or {}
    share = cpu.get("other_share")
    if share is None:
        return "machine load: unknown (no /proc/stat)"
    verdict = ("BUSY: other work ran, compare ratios rather than absolute rates" if share > 0.1
               else "quiet")
    return (f"CPU during the run ({cpu['wall_s']:.0f}s, {meta['cpus']} cores): bench "
            f"{cpu['own_cpu_s']:.0f} core-s, services {cpu['services_cpu_s']:.0f}, other work "
            f"{cpu['other_cpu_s']:.0f} ({share:.0%} of the machine) -> {verdict}")


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")


def write_png(doc: dict[str, Any], path: Path) -> None:
    """Five panels: embedding throughput, tiny-job throughput, latency percentiles,
    packed / single-message throughput with task events on and off, and the bigtable ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, found = doc["results"], doc["analysis"]["rates_per_s"]
    fig, axes = plt.subplots(1, 5, figsize=(26, 5.5),
                             gridspec_kw={"width_ratios": [3, 1.2, 2.2, 1.6, 1.6]})
    labels, values, colors = [], [], []
    inproc = results.get("inprocess")
    if isinstance(inproc, dict) and inproc.get("status", "ok") == "ok":
        for size, row in inproc["by_batch"].items():
            encode = size.startswith(ST_PREFIX)
            batch = size.removeprefix(ST_PREFIX).replace(" x", "\nx")  # "64\nx2": bars are narrow
            labels.append(f"{'st enc' if encode else 'in-proc'}\nb{batch}")
            values.append(row["per_s"])
            colors.append("#d6cbb8" if encode else "#b8c4d6")
    for key, color in (("packed", "#2a6fdb"), ("single", "#5b9bff"), ("naive", "#d9822b"),
                       ("batches", "#f0b35a")):
        if key in found:
            labels.append(RATES[key].replace(" ", "\n", 1))
            values.append(found[key])
            colors.append(color)
    _bars(axes[0], labels, values, colors, title="sentences / s (all-MiniLM-L6-v2)")
    if "limit" in found:
        axes[0].axhline(found["limit"], color="#444", linestyle="--", linewidth=1)
        axes[0].text(len(labels) - 0.5, found["limit"], " limit", va="bottom", ha="right")
    tiny = [(RATES[k].split(": ")[1], found[k]) for k in ("tiny_aidist", "tiny_celery")
            if k in found]
    _bars(axes[1], [t[0] for t in tiny], [t[1] for t in tiny],
          ["#2a6fdb", "#d9822b"][: len(tiny)], title="normalize jobs / s")
    latency = results.get("latency")
    if isinstance(latency, dict) and latency.get("status", "ok") == "ok":
        names = ["toy miss\np50", "toy miss\np99", "toy hit\np50", "toy hit\np99"]
        vals = [latency["miss"]["p50_ms"], latency["miss"]["p99_ms"],
                latency["hit"]["p50_ms"], latency["hit"]["p99_ms"]]
        colors = ["#2a6fdb", "#7fa7e8", "#3a9d5d", "#8cc9a0"]
        bare = results.get("latency_celery")
        for entry, key, name, color in ((latency, "minilm", "minilm\np50", "#5b9bff"),
                                        (latency, "normalize", "op aidist\np50", "#2a6fdb"),
                                        (bare, "normalize", "op Celery\np50", "#d9822b")):
            if isinstance(entry, dict) and entry.get("status", "ok") == "ok" and key in entry:
                names.append(name)
                vals.append(entry[key]["p50_ms"])
                colors.append(color)
        _bars(axes[2], names, vals, colors, title="ms, one job at a time, submit -> result",
              digits=2)
        axes[2].set_yscale("log")
    _events_panel(axes[3], found)
    _bigtable_panel(axes[4], results.get("bigtable"))
    meta = doc["meta"]
    other = (meta.get("cpu") or {}).get("other_share")
    busy = "" if other is None else f", other work {other:.0%} of the machine"
    fig.suptitle(f"aidist bench {meta['started']} ({'quick' if meta['quick'] else 'full'}, "
                 f"best of {meta.get('repeats', 1)}, {meta['cpus']} cores{busy})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _events_panel(axis: Any, found: dict[str, float]) -> None:
    """Each path with task events on and off, and on / off under its pair (target >= 0.95)."""
    labels, values, colors = [], [], []
    ratios = []
    for api, name, on_color, off_color in (("packed", "packed", "#2a6fdb", "#9bb7e6"),
                                           ("single", "single", "#5b9bff", "#bcd4ff")):
        on, off = found.get(f"events_on_{api}"), found.get(f"events_off_{api}")
        if on is None or off is None:
            continue
        labels += [f"{name}\nevents on", f"{name}\nevents off"]
        values += [on, off]
        colors += [on_color, off_color]
        ratios.append(f"{name} {on / off:.2f}")
    title = "sentences / s, task events on vs off"
    if ratios:
        title += f"\non / off: {', '.join(ratios)} (goal >= 0.95)"
    _bars(axis, labels, values, colors, title=title)


def _bigtable_panel(axis: Any, big: Any) -> None:
    """Big table / empty table for each rate of the bigtable scenario (goal >= 0.8)."""
    if not isinstance(big, dict) or big.get("status", "ok") != "ok":
        axis.set_title("big table / empty table (not run)", fontsize=10)
        return
    labels = ["map", "infer +\nresult", "insert +\nmark_sent", "claim +\nfinish"]
    values = [big["ratios"].get(key, 0.0) for key, _, _ in BIGTABLE_ROWS]
    _bars(axis, labels, values, ["#2a6fdb", "#5b9bff", "#3a9d5d", "#8cc9a0"],
          title=f"rate on {big['rows']:,} finished jobs / on an empty table\n(goal >= 0.8)",
          digits=2)
    axis.axhline(1.0, color="#444", linestyle="--", linewidth=1)


def _bars(axis: Any, labels: list[str], values: list[float], colors: list[str], *, title: str,
          digits: int = 0) -> None:
    bars = axis.bar(range(len(values)), values, color=colors)
    axis.set_xticks(range(len(values)), labels, fontsize=8)
    axis.set_title(title, fontsize=10)
    axis.bar_label(bars, labels=[f"{v:,.{digits}f}" for v in values], fontsize=8)
    axis.margins(y=0.15)
