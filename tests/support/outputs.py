"""What the commands print, compared with what they store."""

from __future__ import annotations

from typing import Any


def without_churn(printed: dict[str, Any]) -> dict[str, Any]:
    """``prodclf tag``'s output less the report's churn, which the manifest does not hold."""
    return {k: v for k, v in printed.items() if k != "churn"}
