"""Item text for embedding, in one documented template (TIGER uses title, price, brand and
categories).

Template (fields that are null or empty are left out, HTML entities unescaped)::

    Title: {title}. Brand: {brand}. Categories: {path1 > ...; path2 > ...}. Price: ${price:.2f}.
"""

from __future__ import annotations

import html
from typing import Any


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
    return " ".join(parts) or "Unknown item."
