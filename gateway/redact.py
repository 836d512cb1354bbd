"""What logs and metrics may show of a URL: never its credentials.

An endpoint's URL in models.yaml may carry ``user:password@`` (basic auth to a proxy in front
of vLLM). Logs, metrics labels and the admin's routing view show it without them.
"""

from __future__ import annotations

import re
from functools import lru_cache

_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")


@lru_cache(maxsize=4096)
def redact_url(url: str) -> str:
    """``url`` without its userinfo: ``http://u:p@host:8000/x`` -> ``http://host:8000/x``."""
    return _USERINFO.sub("", url, count=1)
