"""What the cashier offers: every payment element the app configures, presented as its element and the app say.

Each element's presentation comes from the ``cashier:`` block of its definition (its ``e.yaml``, or its entry in the
app YAML), inherited along its types (an instance of ``pays.AliPayType`` looks like Alipay unless it says otherwise),
and from ``settings.cashier.elements.<fullName>`` of the app, which wins:

``title``
    one string, or ``{zh: ..., en: ...}`` (the page shows both). Default: the element's own ``cashier.title``, else
    its ``title``, else its type's ``cashier.title``, else its fullName.
``icon``
    an SVG or PNG file beside the ``e.yaml`` that names it (or beside the app YAML), or a ``data:image/...`` URI;
    shown as an image. Default: ``glyph`` (default the title's first character) on the element's ``color``.
``color``
    the accent, ``#rgb`` or ``#rrggbb``.
``order``
    smaller first (Alipay 10, WeChat Pay 20); then by fullName.
``hidden``
    (settings only) ``true``: configured, but not offered on the cashier.
"""

from __future__ import annotations

import base64
import logging
import re
import weakref
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("jitpay.cashier")

KEYS = ("title", "icon", "color", "order", "glyph", "hidden")
COLOR_RE = re.compile(r"^#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?$")
DEFAULT_COLOR = "#646a73"
DEFAULT_ORDER = 100
ICON_TYPES = {".svg": "image/svg+xml", ".png": "image/png"}
ICON_MAX_BYTES = 32 * 1024

_cache: "weakref.WeakKeyDictionary[Any, list[dict[str, Any]]]" = weakref.WeakKeyDictionary()


def cashier_choices(service: Any) -> list[dict[str, Any]]:
    """The payment elements the buyer can choose from, in order. Each is ``{"fullName", "kind" (its
    providerName), "zh", "en", "icon" (a data URI or None), "glyph", "color", "index" (1, 2, ...), "testid"
    (``choose-{kind}``, then ``choose-{kind}-2``, ...)}``. Computed once per PaySvc (the configuration does not
    change while the app runs); an element whose presentation is broken is shown plainly and logged."""
    cached = _cache.get(service)
    if cached is not None:
        return cached
    app = service.app
    settings = ((app.settings or {}).get("cashier") or {}).get("elements") or {}
    entries = []
    for provider in service.configured_providers():
        override = settings.get(provider.fullName) or {}
        try:
            entry = _present(app, provider, override if isinstance(override, dict) else {})
        except Exception:
            log.exception("the cashier block of %s is not usable; shown plainly", provider.fullName)
            entry = _present(app, provider, {}, plain=True)
        if not entry.pop("hidden"):
            entries.append(entry)
    entries.sort(key=lambda e: (e.pop("sortOrder"), e["fullName"]))
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries, 1):
        seen[entry["kind"]] = seen.get(entry["kind"], 0) + 1
        entry["index"] = index
        entry["testid"] = f"choose-{entry['kind']}" + (f"-{seen[entry['kind']]}" if seen[entry["kind"]] > 1 else "")
    _cache[service] = entries
    return entries


def _blocks(app: Any, fullName: str) -> Iterator[tuple[dict[str, Any], Path, bool]]:
    """Every ``cashier:`` block of the element and then of its types, most specific first: ``(block, the folder its
    files are relative to, whether it is the element's own)``."""
    name: str | None = fullName
    own = True
    while name:
        define = app.getDefine(name)
        for source in reversed(define.sources):
            if source.model.cashier:
                yield source.model.cashier, source.folder or app.root, own
        own = False
        name = define.type


def _present(app: Any, provider: Any, override: dict[str, Any], plain: bool = False) -> dict[str, Any]:
    fullName = provider.fullName
    found: dict[str, tuple[Any, Path]] = {}
    own_title = None
    if not plain:
        for block, folder, own in _blocks(app, fullName):
            for key in KEYS:
                if key in block and key not in found:
                    found[key] = (block[key], folder)
            if own and "title" in block and own_title is None:
                own_title = block["title"]
        for key, value in override.items():
            if key in KEYS:
                found[key] = (value, app.root)
    if "title" in override:
        title = override["title"]
    elif own_title is not None:
        title = own_title
    else:  # its own title, else its type's cashier title
        title = app.getDefine(fullName).title or found.get("title", (None,))[0] or fullName
    if isinstance(title, dict):
        zh, en = str(title.get("zh") or title.get("en") or fullName), str(title.get("en") or "")
    else:
        zh, en = str(title), ""
    color = str(found.get("color", (DEFAULT_COLOR,))[0])
    order = found.get("order", (DEFAULT_ORDER,))[0]
    icon = _icon(*found["icon"]) if "icon" in found else None
    return {"fullName": fullName, "kind": provider.providerName, "zh": zh, "en": en, "icon": icon,
            "glyph": str(found.get("glyph", (zh[:1],))[0])[:2],
            "color": color if COLOR_RE.match(color) else DEFAULT_COLOR,
            "sortOrder": order if isinstance(order, (int, float)) and not isinstance(order, bool) else DEFAULT_ORDER,
            "hidden": found.get("hidden", (False,))[0] is True}


def _icon(value: Any, folder: Path) -> str | None:
    """An icon as a ``data:`` URI: given as one (an image), or read from an SVG/PNG file relative to ``folder``."""
    text = str(value)
    if text.startswith("data:image/"):
        return text if len(text) <= ICON_MAX_BYTES * 2 else None
    path = (folder / text).resolve()
    media = ICON_TYPES.get(path.suffix.lower())
    if media is None or not path.is_file() or path.stat().st_size > ICON_MAX_BYTES:
        log.warning("cashier icon %s is not an SVG or PNG file of at most %d bytes", path, ICON_MAX_BYTES)
        return None
    return f"data:{media};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
