"""One lxml parser for everything gridvm reads: no entities, no network, no huge trees."""

from __future__ import annotations

from lxml import etree

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                          remove_blank_text=True, load_dtd=False)


def parse_xml(text: str | bytes) -> etree._Element:
    """Parse untrusted XML safely; raises ``ValueError`` with lxml's message on bad input."""
    if isinstance(text, str):
        text = text.encode()
    try:
        return etree.fromstring(text, _PARSER)
    except etree.XMLSyntaxError as err:
        raise ValueError(f"invalid XML: {err}") from None
