"""The Go worker's cron dialect (robfig/cron v3, minute resolution; go-worker.md §7).

Exactly five fields: minute, hour, day of month, month (1-12 or jan-dec), day of week (0-6 or
sun-sat; 7 is invalid). Each field takes ``*``, ``?``, numbers, ranges ``a-b``, lists and steps
(``*/n``, ``a-b/n``, ``a/n`` meaning a to the maximum). No descriptors (``@daily``). An optional
``TZ=<zone>`` or ``CRON_TZ=<zone>`` prefix picks the time zone; otherwise UTC. When both day
fields are restricted a day matches either (Vixie cron); a ``*``/``?`` field (step 1) does not
restrict.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MONTHS = {n: i for i, n in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
)}  # fmt: skip
DAYS = {n: i for i, n in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 6, DAYS),
)
SEARCH_YEARS = 5
# Wider than any clock change in the tz database (two hours at most): a time zone's repeated
# hour holds instants whose wall time is earlier than that of an instant before them.
_DST_REACH = dt.timedelta(hours=3)


class CronError(ValueError):
    """The expression is not valid in the Go worker's dialect."""


@dataclass(frozen=True)
class Field:
    values: frozenset[int]
    star: bool  # "*" or "?" with step 1: matches everything and does not restrict the day


@dataclass(frozen=True)
class Schedule:
    minutes: Field
    hours: Field
    days: Field
    months: Field
    weekdays: Field
    tz: dt.tzinfo

    def _day_matches(self, moment: dt.datetime) -> bool:
        dom = moment.day in self.days.values
        dow = (moment.isoweekday() % 7) in self.weekdays.values
        if self.days.star or self.weekdays.star:
            return dom and dow
        return dom or dow

    def next_after(self, now: dt.datetime) -> dt.datetime | None:
        """The first matching minute strictly after ``now`` (UTC result), or None within 5 years.

        Matching is by the zone's wall clock, stepping through real time as robfig/cron does:
        a wall time that a clock change skips does not exist, and one it repeats matches at
        each of its two instants."""
        now = now.astimezone(dt.UTC)
        # Near a clock change the search starts earlier, to see the second occurrence of a
        # repeated wall time (an instant after ``now`` whose wall time is earlier), and goes on
        # past the first match, which may be the later of two instants.
        changing = (now - _DST_REACH).astimezone(self.tz).utcoffset() != (
            now + _DST_REACH
        ).astimezone(self.tz).utcoffset()
        start = now - _DST_REACH if changing else now + dt.timedelta(minutes=1)
        wall_start = start.astimezone(self.tz).replace(second=0, microsecond=0, tzinfo=None)
        best: dt.datetime | None = None
        best_wall = wall_start
        for wall in self._matches(wall_start):
            if best is not None and (not changing or wall > best_wall + _DST_REACH):
                break
            for fold in (0, 1):
                moment = wall.replace(tzinfo=self.tz, fold=fold).astimezone(dt.UTC)
                if moment.astimezone(self.tz).replace(tzinfo=None) != wall:
                    continue  # skipped by a clock change: this wall time does not exist
                if moment > now and (best is None or moment < best):
                    best, best_wall = moment, wall
        return best

    def _matches(self, local: dt.datetime) -> Iterator[dt.datetime]:
        """Naive wall times from ``local`` on that the fields match, for SEARCH_YEARS."""
        limit = local.year + SEARCH_YEARS
        while local.year <= limit:
            if local.month not in self.months.values:
                year, month = (
                    (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
                )
                local = dt.datetime(year, month, 1)
                continue
            if not self._day_matches(local):
                local = dt.datetime(local.year, local.month, local.day) + dt.timedelta(days=1)
                continue
            if local.hour not in self.hours.values:
                local = local.replace(minute=0) + dt.timedelta(hours=1)
                continue
            if local.minute in self.minutes.values:
                yield local
            local += dt.timedelta(minutes=1)


def _number(token: str, names: dict[str, int], field: str, expr: str) -> int:
    lowered = token.lower()
    if lowered in names:
        return names[lowered]
    if not (token.isascii() and token.isdigit()):  # Go's Atoi: ASCII digits only
        raise CronError(f"failed to parse int from {token}: invalid {field} in {expr!r}")
    return int(token)


def _parse_field(expr: str, field: str, low: int, high: int, names: dict[str, int]) -> Field:
    values: set[int] = set()
    star = False
    for part in expr.split(","):
        range_part, _, step_text = part.partition("/")
        step = 1
        if step_text or part.endswith("/"):
            if not (step_text.isascii() and step_text.isdigit()):
                raise CronError(f"failed to parse int from {step_text}: invalid step in {expr!r}")
            step = int(step_text)
            if step == 0:
                raise CronError(f"step of range should be a positive number: {expr!r}")
        if range_part in ("*", "?"):
            start, end = low, high
            star = star or step == 1
        elif "-" in range_part:
            first, _, last = range_part.partition("-")
            start = _number(first, names, field, expr)
            end = _number(last, names, field, expr)
        else:
            start = _number(range_part, names, field, expr)
            end = high if step_text else start
        if start < low:
            raise CronError(f"beginning of range ({start}) below minimum ({low}): {expr}")
        if end > high:
            raise CronError(f"end of range ({end}) above maximum ({high}): {expr}")
        if start > end:
            raise CronError(f"beginning of range ({start}) beyond end of range ({end}): {expr}")
        values.update(range(start, end + 1, step))
    return Field(frozenset(values), star)


def _location(zone: str) -> dt.tzinfo:
    """A zone as Go's time.LoadLocation reads it: "" and "UTC" are UTC, "Local" the
    process's zone ($TZ, else /etc/localtime; UTC when neither names one)."""
    if zone in ("", "UTC"):
        return dt.UTC
    if zone != "Local":
        return ZoneInfo(zone)
    name = os.environ.get("TZ")
    try:
        if name is None:
            with open("/etc/localtime", "rb") as handle:
                return ZoneInfo.from_file(handle)
        return ZoneInfo(name.removeprefix(":")) if name else dt.UTC
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return dt.UTC


def parse(expression: str) -> Schedule:
    """Parse a schedule; CronError names what is wrong."""
    text = expression.strip()
    tz: dt.tzinfo = dt.UTC
    if text.startswith(("TZ=", "CRON_TZ=")):
        zone_part, _, text = text.partition(" ")
        zone = zone_part.split("=", 1)[1]
        try:
            tz = _location(zone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            # OSError: a name that is a directory of the tz database (America), or too long.
            raise CronError(f"provided bad location {zone}: unknown time zone {zone}") from None
        text = text.strip()
    if text.startswith("@"):
        raise CronError(f"parser does not accept descriptors: {text}")
    fields = text.split()
    if len(fields) != 5:
        # Go formats the fields with %v: [a b c], not a Python list.
        listed = " ".join(fields)
        raise CronError(f"expected exactly 5 fields, found {len(fields)}: [{listed}]")
    parsed = [
        _parse_field(value, name, low, high, names)
        for value, (name, low, high, names) in zip(fields, FIELDS, strict=True)
    ]
    return Schedule(*parsed, tz=tz)
