"""Safe XML in and out for the fabric's documents.

The parser resolves no entities, loads no DTD, touches no network and refuses any DOCTYPE at all: the
WireServer never sends one, so a DOCTYPE can only be an attack (XXE, billion laughs) or a broken proxy.
Lookups go by local name, so a namespaced variant of a document reads the same as the plain one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable

from lxml import etree

MAX_DOCUMENT = 1 << 20
MAX_VALUE = 1024

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                          huge_tree=False, remove_comments=True, remove_pis=True)


def parse(body: bytes, what: str, error: Callable[..., Exception]) -> etree._Element:
    """Parse a whole document; raise `error(reason, **data)` for anything we will not read."""
    if not isinstance(body, bytes):
        raise error(f"{what} is not bytes", got=type(body).__name__)
    if len(body) > MAX_DOCUMENT:
        raise error(f"{what} is too large", size=len(body), limit=MAX_DOCUMENT)
    if not body.strip():
        raise error(f"{what} is empty")
    try:
        root = etree.fromstring(body, _PARSER)
    except (etree.XMLSyntaxError, ValueError) as e:
        raise error(f"{what} is not well-formed XML", error=str(e)[:200]) from e
    if root.getroottree().docinfo.doctype:  # type: ignore[union-attr]
        raise error(f"{what} carries a DOCTYPE, which the fabric never sends")
    return root


def local(element: etree._Element) -> str:
    tag: object = element.tag
    if not isinstance(tag, str):  # unresolved entity references carry a function as their tag
        return ""
    return etree.QName(tag).localname


def children(element: etree._Element, name: str) -> Iterator[etree._Element]:
    return (c for c in element if local(c) == name)


def only_child(element: etree._Element, name: str, what: str, error: Callable[..., Exception],
               required: bool = True) -> etree._Element | None:
    found = list(children(element, name))
    if len(found) > 1:
        raise error(f"{what} has a duplicate element", element=name)
    if not found:
        if required:
            raise error(f"{what} lacks a required element", element=name)
        return None
    return found[0]


def text_of(element: etree._Element, name: str, what: str, error: Callable[..., Exception]) -> str:
    """The stripped text of the one child called `name`; it must be there and non-empty."""
    child = only_child(element, name, what, error)
    assert child is not None
    if len(child):
        raise error(f"{what} has an element with unexpected children", element=name)
    value = (child.text or "").strip()
    if not value:
        raise error(f"{what} has an empty element", element=name)
    if len(value) > MAX_VALUE:
        raise error(f"{what} has an overlong value", element=name, length=len(value))
    return value
