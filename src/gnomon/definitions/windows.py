"""Windows, time units and the hop (tail resolution) rule of SPEC §2."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from gnomon.errors import DefinitionError

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


class TimeUnit(enum.Enum):
    """Unit of a window length."""

    MINUTES = ("m", MINUTE_MS)
    HOURS = ("h", HOUR_MS)
    DAYS = ("d", DAY_MS)

    @property
    def suffix(self) -> str:
        return self.value[0]

    @property
    def millis(self) -> int:
        return self.value[1]


_WINDOW_RE = re.compile(r"^\s*(\d+)\s*([mhd])\s*$")
_UNIT_BY_SUFFIX = {unit.suffix: unit for unit in TimeUnit}


@dataclass(frozen=True)
class Window:
    """A window length, e.g. ``Window(90, TimeUnit.DAYS)`` or ``Window.parse("90d")``.

    >>> Window.parse("5h").millis
    18000000
    >>> Window(90, TimeUnit.DAYS).name
    '90d'
    """

    length: int
    unit: TimeUnit

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length <= 0:
            raise DefinitionError(
                f"length must be a positive whole number, got {self.length!r}",
                obj="Window",
                field="length",
                fix="write e.g. Window(5, TimeUnit.HOURS)",
            )
        if not isinstance(self.unit, TimeUnit):
            raise DefinitionError(
                f"unit must be a TimeUnit, got {self.unit!r}",
                obj="Window",
                field="unit",
                fix="use TimeUnit.MINUTES, TimeUnit.HOURS or TimeUnit.DAYS",
            )

    @classmethod
    def parse(cls, text: str | Window) -> Window:
        """Parse ``"30m"``, ``"5h"`` or ``"90d"`` (a Window passes through)."""
        if isinstance(text, Window):
            return text
        match = _WINDOW_RE.match(text) if isinstance(text, str) else None
        if not match or int(match.group(1)) == 0:
            raise DefinitionError(
                f"malformed window {text!r}",
                obj="Window",
                field="length",
                fix='write a positive length and a unit m, h or d, e.g. "30m", "5h", "90d"',
            )
        return cls(int(match.group(1)), _UNIT_BY_SUFFIX[match.group(2)])

    @property
    def millis(self) -> int:
        return self.length * self.unit.millis

    @property
    def name(self) -> str:
        return f"{self.length}{self.unit.suffix}"

    @property
    def hop_millis(self) -> int:
        return hop_millis(self.millis)


def hop_millis(window_millis: int) -> int:
    """The tail resolution of a window of this length (SPEC §2).

    >>> hop_millis(12 * DAY_MS) == DAY_MS, hop_millis(5 * HOUR_MS) == 5 * MINUTE_MS
    (True, True)
    """
    if window_millis >= 12 * DAY_MS:
        return DAY_MS
    if window_millis >= 12 * HOUR_MS:
        return HOUR_MS
    if window_millis >= HOUR_MS:
        return 5 * MINUTE_MS
    return MINUTE_MS


def floor_to(t: int, resolution: int) -> int:
    """``floor(t, h) = t - t mod h`` with Python's floor modulo (right for negative t too)."""
    return t - t % resolution


def window_start(q: int, window_millis: int | None) -> int | None:
    """First included timestamp of the window ending (exclusively) at q; None when unbounded.

    >>> window_start(5 * HOUR_MS + 7, 5 * HOUR_MS)
    0
    """
    if window_millis is None:
        return None
    return floor_to(q - window_millis, hop_millis(window_millis))
