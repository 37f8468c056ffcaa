"""Item text for embedding, in one documented template (TIGER uses title, price, brand and
categories).

Template (fields that are null or empty are left out, HTML entities unescaped)::

    Title: {title}. Brand: {brand}. Categories: {path1 > ...; path2 > ...}. Price: ${price:.2f}.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)
EMPTY_TEXT = "Unknown item."


def _clean(value: Any) -> str:
    return " ".join(html.unescape(str(value)).split()) if value is not None else ""


def item_text(meta: dict[str, Any]) -> str:
    parts = []
    if title := _clean(meta.get("title")):
        parts.append(f"Title: {title}.")
    if (brand := _clean(meta.get("brand"))) and brand.lower() != "unknown":
        parts.append(f"Brand: {brand}.")
    cats = meta.get("categories") or []
    if isinstance(cats, str):
        cats = [[cats]]
    paths = [" > ".join(_clean(c) for c in path if c) for path in cats if path]
    if paths := [p for p in paths if p]:
        parts.append(f"Categories: {'; '.join(paths)}.")
    price = meta.get("price")
    if isinstance(price, (int, float)) and price == price:
        parts.append(f"Price: ${price:.2f}.")
    return " ".join(parts) or EMPTY_TEXT


def warn_empty_texts(texts: Sequence[str], source: str, max_fraction: float = 0.5) -> int:
    """Count items whose text has no field at all; warn when they exceed ``max_fraction``, since
    semantic IDs built from such text carry no meaning. Returns the count."""
    empty = sum(1 for t in texts if not t.strip() or t == EMPTY_TEXT)
    if texts and empty / len(texts) > max_fraction:
        log.warning(
            "%s: %d of %d items (%.0f%%) have no text (no title, brand, categories or price): "
            "text embeddings and the SIDs built from them will not tell these items apart",
            source,
            empty,
            len(texts),
            100.0 * empty / len(texts),
        )
    return empty
