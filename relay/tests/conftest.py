"""The relay's tests import its package from ``relay/`` (it is not a collection plugin)."""

from __future__ import annotations

import sys
from pathlib import Path

RELAY_SOURCES = Path(__file__).resolve().parents[1]
if str(RELAY_SOURCES) not in sys.path:
    sys.path.insert(0, str(RELAY_SOURCES))
