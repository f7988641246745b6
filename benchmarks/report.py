"""Results of ``benchmarks/bench.py``: summaries, the Markdown table, the benchmark block.

    python benchmarks/report.py [--results bench-workdir/results.json] [--readme [FILE]]

Prints the table of a results file; with ``--readme`` it also replaces the block between
``<!-- bench:start -->`` and ``<!-- bench:end -->`` in FILE with it (the markers stay). FILE
defaults to ``docs/benchmarks.md``, where the benchmark method and its tables live.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
#: The document whose bench block ``--readme`` fills when given no file.
DEFAULT_TARGET = "docs/benchmarks.md"


def summarize(seconds: list[float], images: int) -> dict[str, Any]:
    """Median and spread of images/s over the repetitions' wall times."""
    rates = sorted(images / s for s in seconds)
    return {
        "seconds": seconds,
        "images_per_s": rates,
        "median": statistics.median(rates),
        "min": rates[0],
        "max": rates[-1],
    }


def projection(
    rate: float, cores: int, images: int, executors: list[int], exec_cores: int
) -> list[dict[str, Any]]:
    """Hours for ``images`` on N executors of ``exec_cores`` cores, from ``rate`` on ``cores``,
    assuming throughput scales with cores (what the scale series checks on one machine)."""
    per_core = rate / cores
    return [
        {
            "executors": n,
            "executor_cores": exec_cores,
            "hours": images / (per_core * exec_cores * n) / 3600,
        }
        for n in executors
    ]


def fixed_and_marginal(scale: list[dict[str, Any]]) -> tuple[float, float] | None:
    """The least-squares line ``seconds = fixed + images / marginal`` through the scale runs.

    The fixed part is the job's own start (planning, the shuffle, each task's first batch),
    the marginal rate what each further image costs: the per-image efficiency of a catalog
    large enough for the fixed part not to count. None without two sizes or with a line
    that does not rise.
    """
    points = [(float(s["images"]), float(s["seconds"])) for s in scale]
    if len({n for n, _ in points}) < 2:
        return None
    mean_n = statistics.fmean(n for n, _ in points)
    mean_t = statistics.fmean(t for _, t in points)
    slope = sum((n - mean_n) * (t - mean_t) for n, t in points) / sum(
        (n - mean_n) ** 2 for n, _ in points
    )
    if slope <= 0:
        return None
    return mean_t - slope * mean_n, 1 / slope


BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")
IDLE_FIELDS = ("idle", "iowait")


def set_ratios(results: dict[str, Any]) -> None:
    """Each variant's median over the limits (``E_over_*``), once the limits are final."""
    lim = results.get("limits") or {}
    for v in results["variants"].values():
        for key, limit in (
            ("E_over_LF", "LF"),
            ("E_over_LF_lite", "LF_lite"),
            ("E_over_LF_lite_prodclf_fetch", "LF_lite_prodclf_fetch"),
        ):
            v[key] = v["median"] / lim[limit] if lim.get(limit) else None


def busy_cores(before: Any, after: Any, cores: int) -> float:
    """Cores the whole machine kept busy on average between two ``psutil.cpu_times()``.

    Whoever burnt them (the variant, the store, anything else) is not told apart: a
    variant that waits (on I/O, a scheduler, a barrier) shows fewer than all the cores.
    Guest time is part of user time in Linux's counters, so it is not added again.
    """

    def total(t: Any, fields: tuple[str, ...]) -> float:
        return sum(getattr(t, f, 0.0) for f in fields)

    busy = total(after, BUSY_FIELDS) - total(before, BUSY_FIELDS)
    idle = total(after, IDLE_FIELDS) - total(before, IDLE_FIELDS)
    return cores * busy / (busy + idle) if busy + idle > 0 else 0.0


def median_busy_cores(variant: dict[str, Any]) -> float | None:
    """Median over the variant's runs of the cores busy while it ran (older files: None)."""
    values = [r["busy_cores"] for r in variant.get("runs") or [] if r.get("busy_cores") is not None]
    return statistics.median(values) if values else None


def store_share(variant: dict[str, Any], cores: int) -> float | None:
    """Median share of the cores the S3 store (moto and the latency proxy, one process)
    used while the variant ran: on one machine it competes with the client for them."""
    shares = [
        r["store_cpu_s"] / (cores * r["seconds"])
        for r in variant.get("runs") or []
        if r.get("store_cpu_s") is not None and r.get("seconds")
    ]
    return statistics.median(shares) if shares else None


def _fmt(x: float | None, digits: int = 1) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def _readings_note(lim: dict[str, Any]) -> str:
    readings = lim.get("readings") or []
    if len(readings) < 2:
        return ""
    key = "LF_lite" if lim.get("LF_lite") else "LF"
    each = " and ".join(f"{_fmt(r.get(key))}/s" for r in readings)
    return (
        f" Each rate is the best of {len(readings)} readings, before and after the variants "
        f"({key} from each reading alone: {each})."
    )


def markdown(results: dict[str, Any]) -> str:
    """The benchmark block of docs/benchmarks.md, every number read from ``results``."""
    m = results["machine"]
    lim = results.get("limits") or {}
    lf = lim.get("LF")
    lines = [
        f"Measured {m['date']} on {m['cores']} cores ({m['cpu']}, {m['ram_gib']:.0f} GiB RAM), "
        f"load average {m['loadavg_before'][0]:.2f} before and {m['loadavg_after'][0]:.2f} "
        f"after, commit `{m['commit']}`:",
        "",
        f"    {results['command']}",
        "",
        f"{results['images']} images ({results['images_source']}, "
        + (
            f"S3 behind {results['latency_ms']:g} ms per request"
            + (
                ", repeated GETs answered from the proxy's cache"
                if results.get("store_cache_mib")
                else ", moto answering every GET"
            )
            if results["storage"] == "s3"
            else "file://"
        )
        + f"), {results['reps']} alternating repetitions.",
        "",
        "| variant | images/s median | min - max | E/LF | E/LF_lite | E/LF_lite, prodclf's fetch "
        "| store's share of the cores | E/LF_lite, store excluded | cores busy | "
        "peak worker RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lf_lite = lim.get("LF_lite")
    lf_own = lim.get("LF_lite_prodclf_fetch")
    for name, v in results["variants"].items():
        ratio = f"{v['median'] / lf:.2f}" if lf else ""
        ratio_lite = f"{v['median'] / lf_lite:.2f}" if lf_lite else ""
        ratio_own = f"{v['median'] / lf_own:.2f}" if lf_own else ""
        share = store_share(v, m["cores"])
        excluded = (
            f"{v['median'] / (lf_lite * (1 - share)):.2f}" if lf_lite and share is not None else ""
        )
        rss = v.get("peak_worker_rss_mib")
        busy = median_busy_cores(v)
        lines.append(
            f"| {name} | {_fmt(v['median'])} | {_fmt(v['min'])} - {_fmt(v['max'])} | {ratio} "
            f"| {ratio_lite} | {ratio_own} | {'' if share is None else f'{share:.0%}'} "
            f"| {excluded} | {_fmt(busy, 2)} "
            f"| {_fmt(rss, 0)} |"
        )
    if lim:
        f = lim.get("F")
        lines += [
            "",
            f"Limit on these cores: D {_fmt(lim['D'])}/s (prodclf's decoder in "
            f"{lim['cores']} processes; documented decoder {_fmt(lim['D_documented_decoder'])}/s), "
            f"M {_fmt(lim['M'])}/s ({lim['M_device']}; one process "
            f"{_fmt(lim['M_one_process_default_threads'])}/s, one per core "
            f"{_fmt(lim['M_one_process_per_core_one_thread'])}/s), "
            + (f"F {_fmt(f)}/s" if f else "F not measured (file://)")
            + f": LF {_fmt(lf)}/s."
            + (
                f" With the bundle's LiteRT model (what prodclf runs on CPUs): M_lite "
                f"{_fmt(lim['M_lite'])}/s (one process {_fmt(lim['M_lite_one_process'])}/s, one "
                f"per core {_fmt(lim['M_lite_one_process_per_core'])}/s), LF_lite "
                f"{_fmt(lf_lite)}/s."
                if lf_lite
                else ""
            )
            + (
                f" F counts boto3's get_object, as the issue defines it; prodclf's own fetch "
                f"(its direct first GET) costs less: F_prodclf {_fmt(lim['F_prodclf'])}/s, so "
                f"LF_lite with prodclf's fetch {_fmt(lf_own)}/s."
                if lf_own
                else ""
            )
            + _readings_note(lim),
        ]
    scale = results.get("scale") or []
    if scale:
        lines += ["", "| prodclf catalog size | images/s | seconds |", "|---|---|---|"]
        lines += [
            f"| {s['images']} | {_fmt(s['images_per_s'])} | {_fmt(s['seconds'])} |" for s in scale
        ]
        line = fixed_and_marginal(scale)
        if line:
            fixed, marginal = line
            lines += [
                "",
                f"A least-squares line through these runs: a fixed part of {fixed:.1f} s per job "
                f"and a marginal rate of {_fmt(marginal)} images/s"
                + (f" ({marginal / lf_lite:.2f} of LF_lite)" if lf_lite else "")
                + ".",
            ]
    proj = results.get("projection") or []
    if proj:
        lines += [
            "",
            f"Projected 10M-image night from prodclf's {_fmt(results['projection_rate'])} images/s "
            "(linear in cores): "
            + ", ".join(
                f"{p['executors']} x {p['executor_cores']}-core executors {p['hours']:.1f} h"
                for p in proj
            )
            + ".",
        ]
    return "\n".join(lines)


def write_readme_block(readme: Path, block: str) -> None:
    """Replace what lies between the markers in ``readme`` with ``block``."""
    text = readme.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no {START} ... {END} block to fill")
    head = text[: start + len(START)]
    readme.write_text(f"{head}\n{block}\n{text[end:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/report.py", description=__doc__)
    ap.add_argument("--results", default="bench-workdir/results.json")
    ap.add_argument(
        "--readme",
        nargs="?",
        const=DEFAULT_TARGET,
        metavar="FILE",
        help=f"write the table into FILE's bench block (FILE default: {DEFAULT_TARGET})",
    )
    args = ap.parse_args(argv)
    block = markdown(json.loads(Path(args.results).read_text()))
    print(block)
    if args.readme:
        write_readme_block(Path(args.readme), block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
