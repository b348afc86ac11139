"""Safe XML in and out for the fabric's documents.

The parser resolves no entities, loads no DTD, touches no network and refuses any DOCTYPE at all: the
WireServer never sends one, so a DOCTYPE can only be an attack (XXE, billion laughs) or a broken proxy.
Lookups follow one rule (`is_`): by local name, and by namespace too where the caller names one. The
fabric's documents carry none, so a namespaced variant reads the same as the plain one; ovf-env.xml names
its namespaces, so a look-alike element from another namespace is not read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable

from lxml import etree

from statemachine.text import clean

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
        raise error(f"{what} is not well-formed XML", error=clean(str(e), 200)) from e
    if root.getroottree().docinfo.doctype:  # type: ignore[union-attr]
        raise error(f"{what} carries a DOCTYPE, which the fabric never sends")
    return root


def local(element: etree._Element) -> str:
    tag: object = element.tag
    if not isinstance(tag, str):  # unresolved entity references carry a function as their tag
        return ""
    return etree.QName(tag).localname


def is_(element: etree._Element, name: str, ns: str | None = None) -> bool:
    """The one namespace rule: the local name must match; with `ns`, the namespace too (so any prefix
    works, but a look-alike from another namespace does not); without, any namespace reads the same."""
    tag: object = element.tag
    if not isinstance(tag, str):
        return False
    qname = etree.QName(tag)
    return qname.localname == name and (ns is None or qname.namespace == ns)


def children(element: etree._Element, name: str, ns: str | None = None) -> Iterator[etree._Element]:
    return (c for c in element if is_(c, name, ns))


def only_child(element: etree._Element, name: str, what: str, error: Callable[..., Exception],
               required: bool = True, ns: str | None = None) -> etree._Element | None:
    found = list(children(element, name, ns))
    if len(found) > 1:
        raise error(f"{what} has a duplicate element", element=name)
    if not found:
        if required:
            raise error(f"{what} lacks a required element", element=name)
        return None
    return found[0]


def text_of(element: etree._Element, name: str, what: str, error: Callable[..., Exception],
            ns: str | None = None, limit: int = MAX_VALUE) -> str:
    """The stripped text of the one child called `name`; it must be there and non-empty."""
    value = optional_text(element, name, what, error, ns, limit, required=True)
    assert value is not None
    return value


def optional_text(element: etree._Element, name: str, what: str, error: Callable[..., Exception],
                  ns: str | None = None, limit: int = MAX_VALUE, required: bool = False) -> str | None:
    """The stripped text of the one child called `name`; None when it is absent or empty (unless
    `required`). A child with children of its own, or a value over `limit` characters, is refused."""
    child = only_child(element, name, what, error, required=required, ns=ns)
    if child is None:
        return None
    if len(child):
        raise error(f"{what} has an element with unexpected children", element=name)
    value = (child.text or "").strip()
    if len(value) > limit:
        raise error(f"{what} has an overlong value", element=name, length=len(value))
    if not value:
        if required:
            raise error(f"{what} has an empty element", element=name)
        return None
    return value
