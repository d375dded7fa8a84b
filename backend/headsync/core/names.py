"""The one rule for names (subject, model run, shot, renderer): a folder name, never a path.

No slashes, no "..", no newline, no leading dot; checked with a full match everywhere: job parameters,
the OpenAPI document's ``pattern``, the subject records the service reads back from disk, and the names
renderers register under.
"""

from __future__ import annotations

import re
from typing import Any

NAME_PATTERN = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_-])*\.?$"
NAME_MAX = 64
NAME_RE = re.compile(NAME_PATTERN)


def is_name(value: Any) -> bool:
    """True when ``value`` is a valid name (see :data:`NAME_PATTERN`, at most :data:`NAME_MAX` characters)."""
    return isinstance(value, str) and len(value) <= NAME_MAX and NAME_RE.fullmatch(value) is not None
