"""Figures, targets and the Markdown that goes to stdout and into BENCHMARKS.md."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import Sample


@dataclass
class Figure:
    key: str
    section: str
    system: str
    config: str
    unit: str  # "tasks/s", "ms", "MB"
    sample: Sample = field(default_factory=Sample)
    refs: list[str] = field(default_factory=list)  # keys of figures to show ratios to
    notes: list[str] = field(default_factory=list)
    # Secondary per-round values shown in the notes as a median: label -> (samples, unit).
    extras: dict[str, tuple[Sample, str]] = field(default_factory=dict)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def extra(self, label: str, value: float, unit: str) -> None:
        self.extras.setdefault(label, (Sample(), unit))[0].add(value)

    def notes_text(self) -> str:
        parts = list(self.notes)
        for label, (sample, unit) in self.extras.items():
            text = f"{label} {number(sample.median, unit)}{unit}"
            if len(sample.values) > 1:
                text += " (median)"
            parts.append(text)
        return "; ".join(parts)


@dataclass
class Target:
    name: str
    ours: str  # key of our figure
    theirs: str | None  # key of the baseline figure (None: an absolute limit)
    factor: float  # ours/theirs must be >= factor (or <= when lower_is_better)
    lower_is_better: bool = False
    limit: float | None = None  # absolute limit when theirs is None


class Results:
    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}
        self.errors: dict[str, str] = {}  # section or key -> why it could not run
        self.aliases: dict[str, str] = {}  # e.g. "run-pgq-best" -> the best pgqueuer key

    def figure(self, key: str, section: str, system: str, config: str, unit: str) -> Figure:
        if key not in self.figures:
            self.figures[key] = Figure(key, section, system, config, unit)
        return self.figures[key]

    def add(
        self, key: str, section: str, system: str, config: str, unit: str, value: float
    ) -> Figure:
        fig = self.figure(key, section, system, config, unit)
        fig.sample.add(value)
        return fig

    def get(self, key: str | None) -> Figure | None:
        if key is None:
            return None
        fig = self.figures.get(self.aliases.get(key, key))
        return fig if fig is not None and fig.sample.values else None

    def best(self, prefix: str, *, lowest: bool = False) -> str | None:
        """Key of the best figure (highest median; lowest with ``lowest``) whose key starts
        with ``prefix``."""
        keys = [k for k, f in self.figures.items() if k.startswith(prefix) and f.sample.values]
        if not keys:
            return None
        choose: Callable[..., str] = min if lowest else max
        return choose(keys, key=lambda k: self.figures[k].sample.median)


# --- formatting -----------------------------------------------------------------------------------


def number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "—"
    if unit == "ms":
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    if unit == "MB":
        return f"{value:,.1f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


def value_text(fig: Figure) -> str:
    s = fig.sample
    text = f"{number(s.median, fig.unit)} {fig.unit}"
    if len(s.values) > 1:
        text += f" [{number(s.low, fig.unit)}–{number(s.high, fig.unit)}]"
    return text


def ratio_text(results: Results, fig: Figure) -> str:
    parts = []
    for key in fig.refs:
        ref = results.get(key)
        if ref is None or ref is fig or ref.sample.median == 0:
            continue
        parts.append(f"{fig.sample.median / ref.sample.median:.2f}× {ref.system} {ref.config}")
    return "; ".join(parts)


SECTION_ORDER = [
    "Enqueue (one producer, through each system's API)",
    "No-op processing (queue pre-filled; rate = tasks ÷ first start → last finish)",
    "Latency, enqueue → start (steady trickle)",
    "Memory",
    "Claim cost as the READY backlog grows",
    "Start-up",
]


def results_tables(results: Results) -> str:
    out: list[str] = []
    sections = [s for s in SECTION_ORDER if any(f.section == s for f in results.figures.values())]
    for section in sections:
        out.append(f"### {section}\n")
        out.append("| system | configuration | median [min–max] | ratio | notes |")
        out.append("|---|---|---:|---|---|")
        for fig in results.figures.values():
            if fig.section != section or not fig.sample.values:
                continue
            out.append(
                f"| {fig.system} | {fig.config} | {value_text(fig)} | {ratio_text(results, fig)}"
                f" | {fig.notes_text()} |"
            )
        out.append("")
    return "\n".join(out)


def verdict(results: Results, target: Target) -> tuple[str, str, str, str]:
    """(ours, theirs, ratio, verdict) cells of one target row."""
    ours = results.get(target.ours)
    if ours is None:
        why = results.errors.get(target.ours, "not measured in this run")
        return "—", "—", "—", f"not measured: {why}"
    ours_text = f"{value_text(ours)} ({ours.system} {ours.config})"
    if target.theirs is None:
        assert target.limit is not None
        value = ours.sample.median
        ok = value <= target.limit if target.lower_is_better else value >= target.limit
        sign = "≤" if target.lower_is_better else "≥"
        limit_text = f"{sign} {number(target.limit, ours.unit)} {ours.unit}"
        diff = abs(value - target.limit)
        how = f"by {number(diff, ours.unit)} {ours.unit}"
        return ours_text, limit_text, "—", ("**met**, " if ok else "**missed**, ") + how
    theirs = results.get(target.theirs)
    if theirs is None:
        why = results.errors.get(target.theirs, "baseline not measured in this run")
        return ours_text, "—", "—", f"not measured: {why}"
    theirs_text = f"{value_text(theirs)} ({theirs.system} {theirs.config})"
    ratio = ours.sample.median / theirs.sample.median
    if target.lower_is_better:
        ok = ratio <= target.factor
        need = f"≤ {target.factor:g}×"
        how = (
            f"{ratio / target.factor:.2f}× the allowed value"
            if not ok
            else f"{target.factor / ratio:.2f}× headroom"
        )
    else:
        ok = ratio >= target.factor
        need = f"≥ {target.factor:g}×"
        how = (
            f"needs {target.factor / ratio:.2f}× more"
            if not ok
            else f"{ratio / target.factor:.2f}× the required"
        )
    return (
        ours_text,
        theirs_text,
        f"{ratio:.2f}× (need {need})",
        ("**met**, " if ok else "**missed**, ") + how,
    )


def targets_table(results: Results, targets: list[Target]) -> str:
    out = ["| target | reproq | baseline | ratio | verdict |", "|---|---|---|---|---|"]
    for target in targets:
        cells = verdict(results, target)
        out.append(f"| {target.name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def facts_list(facts: dict[str, str]) -> str:
    return "\n".join(f"- **{name}**: {value}" for name, value in facts.items())


# --- BENCHMARKS.md --------------------------------------------------------------------------------

BLOCK = re.compile(r"<!-- generated:(\w+) -->\n.*?<!-- /generated:\1 -->", re.DOTALL)


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    """Replace each ``<!-- generated:NAME -->…<!-- /generated:NAME -->`` block; a block the
    file does not have yet is appended. Text outside the blocks (hand-written analysis) stays."""
    seen: set[str] = set()

    def swap(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in blocks:
            return match.group(0)
        seen.add(name)
        return wrap(name, blocks[name])

    text = BLOCK.sub(swap, text)
    for name, body in blocks.items():
        if name not in seen:
            text = text.rstrip("\n") + "\n\n" + wrap(name, body) + "\n"
    return text


def wrap(name: str, body: str) -> str:
    return f"<!-- generated:{name} -->\n{body.strip()}\n<!-- /generated:{name} -->"


def write(path: Path, blocks: dict[str, str]) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    path.write_text(replace_blocks(text, blocks))
