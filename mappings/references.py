"""The references a mapped resource may carry into the store, and the contained resources it keeps.

A resource stored here may point at only what resolves here for this person:

- the person's shared Patient (``Patient/{id}``) and the CarePlans of the same record,
  including those an adapter named with ``PLAN_REFERENCE`` (another entry of one
  pushed Bundle), which become ``CarePlan/{id}``;
- a contained resource (``#id``) the resource keeps, or the resource itself (``#``).

Any other literal reference is removed (its ``identifier`` and ``display`` stay): it
names a resource held at the sender, which dangles here, or one held here about
someone else. A contained resource nothing else in the resource refers to, and
which does not refer to the resource, is removed rather than stored against
FHIR's dom-3; so is a reference to a contained resource that is not there.

Pure: a function of its arguments; the resource given is not changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

from mappings.engine import pruned


def settled(resource: Mapping[str, Any], named: Mapping[str, str], allowed: Set[str]) -> dict[str, Any]:
    """``resource`` with only the references it may store: ``named`` turns a reference an adapter
    wrote into the one stored; ``allowed`` are the literal references that resolve for this person."""
    local: set[str] = set()  # the local (``#``) references kept by the first walk
    body: dict[str, Any] = dict(_literal(resource, named, allowed, local))
    contained = _kept(body) if body.get("contained") else []
    if contained:
        body["contained"] = contained
    else:
        body.pop("contained", None)
    ids = {f"#{c['id']}" for c in contained if isinstance(c.get("id"), str)} | {"#"}
    if not local <= ids:  # a reference to a contained resource that is not kept
        body = _local(body, ids)
    # ext-1: an extension whose value was a reference now removed, and that holds no extensions of
    # its own, says nothing: dropped, at every level, rather than stored as a bare ``url``.
    out: dict[str, Any] = pruned(body, drop=_bare_extension)
    return out


def _bare_extension(value: Any) -> bool:
    return isinstance(value, Mapping) and "url" in value and set(value) <= {"url", "id"}


def _kept(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """dom-3: the contained resources referred to from elsewhere in the resource (another kept
    contained resource included), or that refer to the resource itself (``#``)."""
    contained = [c for c in body.get("contained", ()) if isinstance(c, Mapping)]
    names = [f"#{c['id']}" if isinstance(c.get("id"), str) else None for c in contained]
    refers = [_strings(c) for c in contained]
    outside = _strings({k: v for k, v in body.items() if k != "contained"})
    alive = set(range(len(contained)))
    while True:
        kept = {i for i in alive if "#" in refers[i] or _named(names[i], outside, refers, alive - {i})}
        if kept == alive:
            return [c for i, c in enumerate(contained) if i in kept]
        alive = kept


def _literal(value: Any, named: Mapping[str, str], allowed: Set[str], local: set[str]) -> Any:
    """``value`` with each reference renamed (``named``) or removed unless local or ``allowed``.
    Copy on write: what holds no change is handed back as it is (most of a resource)."""
    if isinstance(value, list):
        changed: list[Any] | None = None
        for i, item in enumerate(value):
            new = _literal(item, named, allowed, local) if isinstance(item, dict | list) else item
            if changed is None and new is not item:
                changed = value[:i]
            if changed is not None:
                changed.append(new)
        return value if changed is None else changed
    out: dict[str, Any] | None = None
    for key, item in value.items():
        if isinstance(item, dict | list):
            new = _literal(item, named, allowed, local)
            if new is not item:
                out = dict(value) if out is None else out
                out[key] = new
    reference = value.get("reference")
    if isinstance(reference, str):
        renamed = named.get(reference, reference)
        if renamed.startswith("#"):
            local.add(renamed)
        if renamed.startswith("#") or renamed in allowed:
            if renamed != reference:
                out = dict(value) if out is None else out
                out["reference"] = renamed
        else:
            out = dict(value) if out is None else out
            _unreference(out)
    return value if out is None else out


def _local(value: Any, ids: Set[str]) -> Any:
    """References to contained resources that are kept (or to the resource itself) only."""
    if isinstance(value, list):
        return [_local(v, ids) for v in value]
    if not isinstance(value, Mapping):
        return value
    out = {k: _local(v, ids) for k, v in value.items()}
    reference = out.get("reference")
    if isinstance(reference, str) and reference.startswith("#") and reference not in ids:
        _unreference(out)
    return out


def _unreference(reference: dict[str, Any]) -> None:
    """Drop a Reference's ``reference``; a ``type`` with nothing else left names nothing either."""
    del reference["reference"]
    if "identifier" not in reference and "display" not in reference:
        reference.pop("type", None)


def _named(name: str | None, outside: Set[str], refers: list[set[str]], others: Set[int]) -> bool:
    return name is not None and (name in outside or any(name in refers[j] for j in others))


def _strings(value: Any) -> set[str]:
    """Every string in ``value`` that could be a local reference (a Reference, canonical or uri)."""
    if isinstance(value, str):
        return {value} if value.startswith("#") else set()
    if isinstance(value, Mapping):
        return set().union(*(_strings(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_strings(v) for v in value)) if value else set()
    return set()
