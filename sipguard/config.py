"""Run-time settings: the policy path and what the command line overrides.

Raises, never exits (only the CLI exits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    policy_path: str
    listen: tuple[str, ...] = ()  # overrides service.listen when given
    admin: str | None = None  # overrides service.admin
    advertise: str | None = None  # overrides service.advertise
    decision_log: str | None = None  # a file; default stderr
    use_uvloop: bool = True
    extra_aliases: tuple[str, ...] = field(default=())
