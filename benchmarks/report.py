"""What benchmarks/run.py reports: the figures derived from its timings, the table, the summary against the
issue's targets, the plot and the JSON file.

- ``add_ratios(case)``: once every implementation of a case has its ``median_ms``, the ratios: to jaxnorm's time
  (``ratio_to_jaxnorm``), the bandwidth (``gbps``: the bytes the op must move at least / time) and its share of
  the copy kernel's (``pct_copy``), the speed-up over and temporary memory against ``BASELINE`` (flax.linen).
- ``HEADER``, ``LEGEND``, ``format_rows(case)``: the table on stdout, one row per case and implementation.
- ``summarize(cases, targets)``: geometric means over the shapes per (op, mode, dtype), each of run.py's
  ``TARGETS`` over the cases it covers, and the per-cell counts of ``cells_below``; ``format_summary`` prints the
  means and targets, ``format_cells`` the counts.
- ``cells_below(cases, peers, threshold)``: per cell (op, mode, shape, dtype), the fastest of ``peers`` that ran
  there (median time) / jaxnorm's median time; how many cells fall below ``threshold`` and the worst one.
  Against ``JAX_PEERS`` (the JAX libraries: not PyTorch, not the copy kernel) it is issue 22's first target;
  against ``torch_cpu`` it is informational.
- ``plot(cases, path)``: the speed-up over flax.linen per case (matplotlib, no display); ``write_json``.
"""

from __future__ import annotations

import json
import math

from peers import ADAPTIVE, CHANNELS, GATED, IMPLS, MODES, OPS, RESIDUAL, ROWS

BASELINE = "flax_linen"
# The JAX peers a cell is judged against (whichever ran): not jaxnorm's own Pallas kernels, not PyTorch, not copy.
JAX_PEERS = ("flax_linen", "flax_nnx", "keras", "haiku", "equinox", "naive_jnp")
TORCH_PEERS = ("torch_cpu", "torch_cuda")
CELL_THRESHOLD = 0.95  # the default of cells_below: run.py passes its TARGETS value


def add_ratios(case):
    """Each timed implementation's ratios, from the ``median_ms`` of every one (jaxnorm's always there)."""
    results = case["results"]
    timed = [impl for impl, r in results.items() if "median_ms" in r]
    ref_ms = results["jaxnorm"]["median_ms"]
    copy_ms = results.get("copy", {}).get("median_ms")
    copy_gbps = None if copy_ms is None else case["bytes_moved"] / (copy_ms * 1e-3) / 1e9
    for impl in timed:
        entry = results[impl]
        gbps = case["bytes_moved"] / (entry["median_ms"] * 1e-3) / 1e9
        entry.update(
            ratio_to_jaxnorm=entry["median_ms"] / ref_ms,
            gbps=gbps,
            pct_copy=None if copy_gbps is None else 100.0 * gbps / copy_gbps,
        )
    base = results.get(BASELINE, {})
    base_ms, base_temp = base.get("median_ms"), base.get("temp_bytes")
    for impl in timed:
        entry = results[impl]
        entry["speedup_vs_flax_linen"] = None if base_ms is None else base_ms / entry["median_ms"]
        temp = entry.get("temp_bytes")
        entry["temp_ratio_to_flax_linen"] = (
            temp / base_temp if temp is not None and base_temp else (0.0 if temp == 0 and base_temp == 0 else None)
        )
    return case


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


LEGEND = (
    "x_jaxnorm = time / jaxnorm time (> 1: jaxnorm faster); GB/s = bytes that must move / time; "
    "%copy = GB/s / copy kernel's GB/s; temp = XLA temp bytes"
)
HEADER = (
    f"{'op':<10} {'mode':<7} {'shape':<18} {'dtype':<8} {'impl':<10} {'median ms':>10} {'x_jaxnorm':>9} "
    f"{'GB/s':>7} {'%copy':>6} {'temp MiB':>9} {'temp/flax':>9}  status"
)


def format_rows(case):
    rows = []
    for impl, r in case["results"].items():
        temp = r.get("temp_bytes")
        rows.append(
            f"{case['op']:<10} {case['mode']:<7} {str(tuple(case['shape'])):<18} {case['dtype']:<8} {impl:<10} "
            f"{_fmt(r.get('median_ms'), '10.3f'):>10} {_fmt(r.get('ratio_to_jaxnorm'), '9.2f'):>9} "
            f"{_fmt(r.get('gbps'), '7.1f'):>7} {_fmt(r.get('pct_copy'), '6.0f'):>6} "
            f"{_fmt(None if temp is None else temp / 2**20, '9.2f'):>9} "
            f"{_fmt(r.get('temp_ratio_to_flax_linen'), '9.2f'):>9}  {r.get('status', '')}"
        )
    return rows


def _geomean(values):
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _cell_label(c):
    return f"{c['op']} {c['mode']} {tuple(c['shape'])} {c['dtype']}"


def cell_ratios(cases, peers):
    """Per case where jaxnorm and at least one of ``peers`` were timed: the fastest such peer's median time /
    jaxnorm's median time (< 1: that peer is faster), with which peer it was."""
    cells = []
    for c in cases:
        results = c["results"]
        ms = results.get("jaxnorm", {}).get("median_ms")
        timed = [(results[p]["median_ms"], p) for p in peers if results.get(p, {}).get("median_ms") is not None]
        if ms is None or not timed:
            continue
        peer_ms, peer = min(timed)
        cells.append(
            {
                "op": c["op"],
                "mode": c["mode"],
                "shape": list(c["shape"]),
                "dtype": c["dtype"],
                "ratio": peer_ms / ms,
                "peer": peer,
                "peer_ms": peer_ms,
                "jaxnorm_ms": ms,
            }
        )
    return cells


def cells_below(cases, peers, threshold=CELL_THRESHOLD):
    """How many cells (op, mode, shape, dtype) have jaxnorm below ``threshold`` x the fastest of ``peers`` that
    ran there (fastest peer median time / jaxnorm median time < ``threshold``), and the worst cell."""
    cells = cell_ratios(cases, peers)
    ran = [p for p in peers if any(c["results"].get(p, {}).get("median_ms") is not None for c in cases)]
    below = sorted((c for c in cells if c["ratio"] < threshold), key=lambda c: c["ratio"])
    return {
        "threshold": threshold,
        "peers": ran,  # those timed in at least one cell
        "cells": len(cells),
        "below": len(below),
        "worst": min(cells, key=lambda c: c["ratio"]) if cells else None,
        "below_cells": below,  # worst first
    }


def summarize(cases, targets):
    """Per (op, mode, dtype): geometric means of the headline ratios; each target over the cases it covers; and
    the per-cell counts against the fastest JAX peer and against each PyTorch peer that ran."""
    groups = {}
    for c in cases:
        groups.setdefault((c["op"], c["mode"], c["dtype"]), []).append(c)
    by_group = []
    for (op, mode, dtype), cs in groups.items():
        row = {"op": op, "mode": mode, "dtype": dtype, "cases": len(cs)}
        for impl in IMPLS:
            if impl == "jaxnorm":
                continue
            ratios = [c["results"].get(impl, {}).get("ratio_to_jaxnorm") for c in cs]
            row[f"{impl}_over_jaxnorm_geomean"] = _geomean(ratios)
        row["jaxnorm_pct_copy_geomean"] = _geomean([c["results"]["jaxnorm"].get("pct_copy") for c in cs])
        row["jaxnorm_temp_vs_flax_linen_geomean"] = _geomean(
            [c["results"]["jaxnorm"].get("temp_ratio_to_flax_linen") for c in cs]
        )
        by_group.append(row)

    def target(key, name, items, better):
        """``items``: (label, value) pairs, each met when on the right side of ``targets[key]``; the target is
        met when every value is (None: no case to judge)."""
        threshold = targets[key]
        values = [
            {"case": label, "value": v, "met": bool(v >= threshold if better == "higher" else v <= threshold)}
            for label, v in items
            if v is not None
        ]
        return {
            "key": key,
            "name": name,
            "threshold": threshold,
            "better": better,
            "cases": values,
            "met_in": f"{sum(v['met'] for v in values)}/{len(values)}",
            "met": all(v["met"] for v in values) if values else None,
        }

    def per_group(mode, key, ops=OPS):  # one value per (op, dtype): the geometric mean over the shapes
        return [(f"{g['op']} {g['dtype']}", g.get(key)) for g in by_group if g["mode"] == mode and g["op"] in ops]

    def over_copy(c):
        copy_ms = c["results"].get("copy", {}).get("median_ms")
        ms = c["results"]["jaxnorm"].get("median_ms")
        return None if copy_ms is None or ms is None else ms / copy_ms

    def beyond(ops):
        return [
            (f"{c['op']} {'x'.join(map(str, c['shape']))} {c['dtype']}", over_copy(c))
            for c in cases
            if c["mode"] == "fwd" and c["beyond_cache"] and c["op"] in ops
        ]

    cell_threshold = targets["every_cell_vs_fastest_jax_peer"]
    vs_jax = cells_below(cases, JAX_PEERS, cell_threshold)
    summary_targets = [
        target(
            "every_cell_vs_fastest_jax_peer",
            "every cell: fastest JAX peer time / jaxnorm time",
            [(_cell_label(c), c["ratio"]) for c in cell_ratios(cases, JAX_PEERS)],
            "higher",
        ),
        target(
            "fwd_vs_flax_linen",
            "fwd: flax.linen time / jaxnorm time (geomean over shapes, per op and dtype)",
            per_group("fwd", "flax_linen_over_jaxnorm_geomean"),
            "higher",
        ),
        target(
            "fwd+bwd_vs_flax_linen",
            "fwd+bwd: flax.linen time / jaxnorm time (geomean over shapes, per op and dtype)",
            per_group("fwd+bwd", "flax_linen_over_jaxnorm_geomean"),
            "higher",
        ),
        target(
            "rows_fwd_time_over_copy_beyond_cache",
            "fwd beyond the last-level cache, layer/rms_norm, add & norm, AdaLN, gated: jaxnorm time / copy time",
            beyond(ROWS + RESIDUAL + ADAPTIVE + GATED),
            "lower",
        ),
        target(
            "channels_fwd_time_over_copy_beyond_cache",
            "fwd beyond the last-level cache, batch/group_norm: jaxnorm time / copy time",
            beyond(CHANNELS),
            "lower",
        ),
    ]
    torch = {p: cells_below(cases, (p,), cell_threshold) for p in TORCH_PEERS}
    return {
        "groups": by_group,
        "targets": summary_targets,
        "cells_vs_fastest_jax_peer": vs_jax,
        "cells_vs_torch": {p: v for p, v in torch.items() if v["cells"]},  # informational; those that ran
    }


def _verdict(met):
    return "-      " if met is None else ("met    " if met else "NOT MET")


def format_summary(summary):
    """The summary's lines: the geometric means per group, then each target, met or not, with its figures."""
    lines = ["", "summary (geometric means over shapes of time / jaxnorm time):"]
    for g in summary["groups"]:
        parts = [
            f"{impl}={_fmt(g.get(f'{impl}_over_jaxnorm_geomean'), '.2f')}"
            for impl in IMPLS
            if impl != "jaxnorm" and g.get(f"{impl}_over_jaxnorm_geomean") is not None
        ]
        lines.append(
            f"  {g['op']:<10} {g['mode']:<7} {g['dtype']:<8} "
            + " ".join(parts)
            + f"  jaxnorm %copy={_fmt(g['jaxnorm_pct_copy_geomean'], '.0f')}"
            + f"  temp/flax={_fmt(g['jaxnorm_temp_vs_flax_linen_geomean'], '.2f')}"
        )
    lines.append("targets (issue 22; met, NOT MET, or - where no case was run to judge it):")
    for t in summary["targets"]:
        sign = ">=" if t["better"] == "higher" else "<="
        head = f"  {_verdict(t['met'])} {t['name']} {sign} {t['threshold']:g}: "
        if not t["cases"]:
            lines.append(head + "no case")
        elif t["key"] == "every_cell_vs_fastest_jax_peer":  # one value per cell: the count and the worst
            worst = summary["cells_vs_fastest_jax_peer"]["worst"]
            lines.append(head + f"met in {t['met_in']} cells; worst {_cell(worst)}")
        else:
            values = ", ".join(f"{v['case']} {v['value']:.2f}" for v in t["cases"])
            lines.append(head + f"met in {t['met_in']} [{values}]")
    return lines


def _cell(c):
    return (
        f"{c['op']} {c['mode']} {tuple(c['shape'])} {c['dtype']}: {c['ratio']:.2f}x {c['peer']} "
        f"({c['peer_ms']:.3f} ms, jaxnorm {c['jaxnorm_ms']:.3f} ms)"
    )


def format_cells(summary, listed=10):
    """The per-cell counts: against the fastest JAX peer (the ``listed`` worst cells below the threshold), then,
    informational, against each PyTorch peer that ran."""
    jax_cells = summary["cells_vs_fastest_jax_peer"]
    threshold = jax_cells["threshold"]
    lines = [
        f"cells (op, mode, shape, dtype) with jaxnorm below {threshold:g}x the fastest JAX peer that ran "
        f"({', '.join(jax_cells['peers']) or 'none ran'}; medians): {jax_cells['below']} of {jax_cells['cells']}"
    ]
    if jax_cells["worst"] is not None:
        lines.append(f"  worst: {_cell(jax_cells['worst'])}")
    for c in jax_cells["below_cells"][:listed]:
        lines.append(f"  below: {_cell(c)}")
    if len(jax_cells["below_cells"]) > listed:
        more = len(jax_cells["below_cells"]) - listed
        lines.append(f"  ... and {more} more (summary.cells_vs_fastest_jax_peer in the JSON)")
    if not summary["cells_vs_torch"]:
        lines.append("informational, against PyTorch: torch_cpu did not run")
    for peer, cells in summary["cells_vs_torch"].items():
        lines.append(
            f"informational, against PyTorch ({peer}): jaxnorm below {cells['threshold']:g}x {peer} in "
            f"{cells['below']} of {cells['cells']} cells; worst {_cell(cells['worst'])}"
        )
    return lines


def plot(cases, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ops = [op for op in OPS if any(c["op"] == op for c in cases)]
    fig = Figure(figsize=(14, 4.2 * len(ops)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(ops), len(MODES), squeeze=False)
    impls = [i for i in IMPLS if i != BASELINE and any(i in c["results"] for c in cases)]
    for row, op in enumerate(ops):
        for col, mode in enumerate(MODES):
            ax = axes[row][col]
            cs = [c for c in cases if c["op"] == op and c["mode"] == mode]
            width = 0.8 / max(len(impls), 1)
            for k, impl in enumerate(impls):
                values = [c["results"].get(impl, {}).get("speedup_vs_flax_linen") or 0.0 for c in cs]
                positions = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(cs))]
                ax.bar(positions, values, width, label=impl)
            ax.axhline(1.0, color="black", lw=0.8)
            ax.set_xticks(range(len(cs)))
            ax.set_xticklabels(["x".join(map(str, c["shape"])) + "\n" + c["dtype"] for c in cs], fontsize=7)
            ax.set_ylabel("flax.linen time / impl time")
            ax.set_title(f"{op} {mode} (higher = faster than flax.linen)")
            ax.set_yscale("log")
    axes[0][-1].legend(fontsize=7, ncols=2)
    fig.savefig(path, dpi=110)


def write_json(info, path):
    path.write_text(json.dumps(info, indent=1, allow_nan=False, default=float) + "\n")
