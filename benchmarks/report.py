"""What benchmarks/run.py reports: the figures derived from its timings, the table, the summary against the
issue's targets, the plot and the JSON file.

- ``add_ratios(case)``: once every implementation of a case has its ``median_ms``, the ratios: to jaxnorm's time
  (``ratio_to_jaxnorm``), the bandwidth (``gbps``: the bytes the op must move at least / time) and its share of
  the copy kernel's (``pct_copy``), the speed-up over and temporary memory against ``BASELINE`` (flax.linen).
- ``HEADER``, ``LEGEND``, ``format_rows(case)``: the table on stdout, one row per case and implementation.
- ``summarize(cases, targets)``: geometric means over the shapes per (op, mode, dtype), and each of run.py's
  ``TARGETS`` over the cases it covers; ``format_summary`` prints them.
- ``plot(cases, path)``: the speed-up over flax.linen per case (matplotlib, no display); ``write_json``.
"""

from __future__ import annotations

import json
import math

from peers import CHANNELS, IMPLS, MODES, OPS, ROWS

BASELINE = "flax_linen"


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


def summarize(cases, targets):
    """Per (op, mode, dtype): geometric means of the headline ratios; and each target over the cases it covers."""
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

    def target(name, threshold, items, better):
        """``items``: (label, value) pairs, each met when on the right side of ``threshold``."""
        values = [
            {"case": label, "value": v, "met": bool(v >= threshold if better == "higher" else v <= threshold)}
            for label, v in items
            if v is not None
        ]
        return {
            "name": name,
            "threshold": threshold,
            "better": better,
            "cases": values,
            "met_in": f"{sum(v['met'] for v in values)}/{len(values)}",
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

    summary_targets = [
        target(
            "fwd: flax.linen time / jaxnorm time (geomean over shapes)",
            targets["fwd_vs_flax_linen"],
            per_group("fwd", "flax_linen_over_jaxnorm_geomean"),
            "higher",
        ),
        target(
            "fwd+bwd: flax.linen time / jaxnorm time (geomean over shapes)",
            targets["fwd+bwd_vs_flax_linen"],
            per_group("fwd+bwd", "flax_linen_over_jaxnorm_geomean"),
            "higher",
        ),
        target(
            "layer_norm fwd+bwd: torch (CPU) time / jaxnorm time (geomean)",
            targets["layer_norm_fwd+bwd_vs_torch_cpu"],
            per_group("fwd+bwd", "torch_cpu_over_jaxnorm_geomean", ("layer_norm",)),
            "higher",
        ),
        target(  # on a GPU: PyTorch on the same GPU
            "layer_norm fwd+bwd: torch (CUDA) time / jaxnorm time (geomean)",
            targets["layer_norm_fwd+bwd_vs_torch_cuda"],
            per_group("fwd+bwd", "torch_cuda_over_jaxnorm_geomean", ("layer_norm",)),
            "higher",
        ),
        target(
            "fwd beyond the last-level cache, layer/rms_norm: jaxnorm time / copy time",
            targets["rows_fwd_time_over_copy_beyond_cache"],
            beyond(ROWS),
            "lower",
        ),
        target(
            "fwd beyond the last-level cache, batch/group_norm: jaxnorm time / copy time",
            targets["channels_fwd_time_over_copy_beyond_cache"],
            beyond(CHANNELS),
            "lower",
        ),
        target(
            "fwd+bwd: jaxnorm temp bytes / flax.linen temp bytes (geomean)",
            targets["fwd+bwd_temp_vs_flax_linen"],
            per_group("fwd+bwd", "jaxnorm_temp_vs_flax_linen_geomean"),
            "lower",
        ),
    ]
    return {"groups": by_group, "targets": summary_targets}


def format_summary(summary):
    """The summary's lines: the geometric means per group, then each target."""
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
    lines.append("targets:")
    for t in summary["targets"]:
        sign = ">=" if t["better"] == "higher" else "<="
        values = ", ".join(f"{v['case']} {v['value']:.2f}" for v in t["cases"])
        lines.append(f"  {t['name']} {sign} {t['threshold']}: met in {t['met_in']} [{values}]")
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
