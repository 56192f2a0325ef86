"""Make matplotlib's SVG output small and deterministic: sub-pixel digits, unreferenced
group ids, attribute-less groups, no-op rotations and indentation dropped, so regenerating
unchanged results rewrites identical files."""

from __future__ import annotations

import re
from xml.etree import ElementTree

_SVG_NS = "http://www.w3.org/2000/svg"
_XLINK_NS = "http://www.w3.org/1999/xlink"


def _unwrap_plain_groups(element: ElementTree.Element) -> None:
    """Replace every <g> without attributes by its children (such a group does nothing)."""
    children: list[ElementTree.Element] = []
    for child in element:
        _unwrap_plain_groups(child)
        if child.tag == f"{{{_SVG_NS}}}g" and not child.attrib:
            children.extend(child)
        else:
            children.append(child)
    element[:] = children


def compact_svg(svg: str) -> str:
    """Drop what only adds bytes to matplotlib's SVG: sub-pixel digits, group ids (nothing
    refers to them; clip paths keep theirs), the groups then left without attributes,
    no-op rotations and indentation."""
    svg = re.sub(r"(\d+\.\d\d)\d+", r"\1", svg)
    svg = re.sub(r'(<g) id="[^"]*"', r"\1", svg)
    svg = re.sub(r' transform="rotate\(-0 [^"]*\)"', "", svg)
    svg = re.sub(r' d="([^"]*)"', lambda m: ' d="' + " ".join(m[1].split()) + '"', svg)
    ElementTree.register_namespace("", _SVG_NS)
    ElementTree.register_namespace("xlink", _XLINK_NS)
    root = ElementTree.fromstring(svg)
    _unwrap_plain_groups(root)
    text = ElementTree.tostring(root, encoding="unicode")
    return re.sub(r" *\n\s*", "\n", text).strip() + "\n"
