"""UK Core conformance, checked offline from the published definitions.

``Conformance.load(dirs)`` reads StructureDefinitions, ValueSets and CodeSystems
(the UK Core profiles and extensions are differentials; the FHIR R4 resources and
datatypes they build on are snapshots). ``check(resource)`` then walks the resource
against its profile and reports, as element paths and never values:

- cardinality: an element with ``min >= 1`` must be present wherever its parent is,
  and ``max`` holds (slices included, e.g. ``Patient.identifier:nhsNumber`` max 1);
- fixed and pattern values (``fixedUri``, ``patternCodeableConcept`` ...);
- slices told apart by ``value``/``pattern`` discriminators (the NHS number slice by
  ``system``; extensions by ``url``), each member checked against its slice's rules;
- extensions against their own definition (found by url), plus invariant ext-1
  (a value or nested extensions, not both);
- the allowed types of choice elements (``value[x]``);
- required bindings, when their ValueSet can be expanded from the loaded definitions
  (``compose.include``/``exclude`` of whole complete CodeSystems, listed concepts or
  other ValueSets).

What it cannot check it says in ``skipped``: required bindings whose ValueSet cannot be
expanded offline (filters, SNOMED CT, BCP-47 ...), slicings it cannot evaluate, and
profiles referenced but not loaded. FHIRPath invariants other than ext-1, reference
targets and terminology beyond the loaded files are out of scope.

Pure: files are read in ``load`` only; ``check`` is a function of its arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

Json = Mapping[str, Any]
Codes = frozenset[tuple[str, str]]
_Wanted = tuple[str, str, Any]  # discriminator path, "fixed..."/"pattern...", the value a slice has there

BASE: Final = "http://hl7.org/fhir/StructureDefinition/"
_SLICE = re.compile(r":[^.]+")
_EXTENSIONS: Final = ("extension", "modifierExtension")
_BY_URL: Final = ({"type": "value", "path": "url"},)


@dataclass(frozen=True, slots=True)
class _Definition:
    """One StructureDefinition as a table of element definitions by element id."""

    url: str
    type: str
    kind: str
    elements: Mapping[str, Json]
    children: Mapping[str, tuple[str, ...]]
    slices: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Conformance:
    """Checks resources against loaded UK Core / FHIR R4 definitions. Build with ``load``."""

    definitions: Mapping[str, _Definition]
    expansions: Mapping[str, Codes]
    #: What this checker does not verify with the loaded definitions, one line each.
    skipped: tuple[str, ...] = ()

    @classmethod
    def load(cls, definitions_dirs: Iterable[Path]) -> Conformance:
        """Read every ``*.json`` in the folders (not recursive). The only I/O in this module."""
        loaded = []
        for folder in definitions_dirs:
            for path in sorted(Path(folder).glob("*.json")):
                loaded.append(json.loads(path.read_text(encoding="utf-8")))
        return cls.from_resources(loaded)

    @classmethod
    def from_resources(cls, resources: Iterable[Json]) -> Conformance:
        by_type: dict[str, dict[str, Json]] = {"StructureDefinition": {}, "ValueSet": {}, "CodeSystem": {}}
        for resource in resources:
            kind = resource.get("resourceType")
            if kind in by_type and "url" in resource:
                by_type[kind][resource["url"]] = resource
        skipped: list[str] = []
        definitions: dict[str, _Definition] = {}
        for url in by_type["StructureDefinition"]:
            _build(url, by_type["StructureDefinition"], definitions, skipped)
        expansions: dict[str, Codes] = {}
        for url in by_type["ValueSet"]:
            codes = _expand(url, by_type["ValueSet"], by_type["CodeSystem"], set())
            if isinstance(codes, frozenset):
                expansions[url] = codes
        skipped.extend(_unchecked(definitions, expansions, by_type["ValueSet"], by_type["CodeSystem"]))
        return cls(definitions, expansions, tuple(sorted(set(skipped))))

    def check(self, resource: Json, profile: str | None = None, require: Iterable[str] = ()) -> list[str]:
        """The conformance problems of ``resource``: element paths and rules, never values.

        ``profile`` names the StructureDefinition to check against (a ValueError if it is
        not loaded); by default every loaded ``meta.profile``, else the base resource.
        ``require`` lists element ids (``Patient.identifier:nhsNumber``) whose minimum
        cardinality is raised to 1: a policy stricter than the profile, such as concord's
        rule that every Patient carries its NHS number.
        """
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            return ["(resource): resourceType is missing"]
        if profile is not None:
            if profile not in self.definitions:
                raise ValueError(f"profile not loaded: {profile}")
            urls = [profile]
        else:
            declared = resource.get("meta", {}).get("profile", [])
            urls = [u for u in declared if u in self.definitions] or [BASE + resource_type]
        walk = _Walk(self, frozenset(require))
        for url in urls:
            definition = self.definitions.get(url)
            if definition is None:
                walk.report(f"{resource_type}: no StructureDefinition loaded for it")
            elif definition.type != resource_type:
                walk.report(f"{resource_type}: profile {url} constrains {definition.type}")
            else:
                walk.node(definition, definition.type, resource, resource_type)
        return list(walk.problems)


# Building definitions ------------------------------------------------------------------------------


def _unsliced(element_id: str) -> str:
    return _SLICE.sub("", element_id)


def _build(
    url: str,
    raw: Mapping[str, Json],
    built: dict[str, _Definition],
    skipped: list[str],
    building: frozenset[str] = frozenset(),
) -> None:
    """Add the element table of ``url`` (and of its bases) to ``built``.

    A snapshot is taken as it is; a differential is merged over its base's table.
    """
    if url in built:
        return
    sd = raw[url]
    if "snapshot" in sd:
        elements = {e["id"]: e for e in sd["snapshot"]["element"]}
    else:
        base_url = sd.get("baseDefinition", "")
        if base_url not in raw or base_url in building:
            skipped.append(f"{url}: base {base_url} not loaded, definition not used")
            return
        _build(base_url, raw, built, skipped, building | {url})
        if base_url not in built:
            return
        elements = dict(built[base_url].elements)
        for element in sd.get("differential", {}).get("element", []):
            elements[element["id"]] = {**elements.get(element["id"], {}), **element}
    children: dict[str, list[str]] = {}
    slices: dict[str, list[str]] = {}
    for element_id in elements:
        if "." not in element_id:
            continue
        parent, last = element_id.rsplit(".", 1)
        name, _, slice_name = last.partition(":")
        siblings = children.setdefault(parent, [])
        if name not in siblings:
            siblings.append(name)
        if slice_name:
            slices.setdefault(f"{parent}.{name}", []).append(element_id)
    built[url] = _Definition(
        url,
        sd["type"],
        sd.get("kind", ""),
        elements,
        {k: tuple(v) for k, v in children.items()},
        {k: tuple(v) for k, v in slices.items()},
    )


def _element(definition: _Definition, element_id: str) -> Json | None:
    """The element's rules: its own merged over those of the element it slices, if any."""
    exact = definition.elements.get(element_id)
    general_id = _unsliced(element_id)
    general = definition.elements.get(general_id) if general_id != element_id else None
    if general is None:
        return exact
    merged = {k: v for k, v in general.items() if k not in ("slicing", "sliceName")}
    if ":" in element_id.rsplit(".", 1)[-1]:
        merged["min"] = 0  # a slice is optional unless it says otherwise
    return {**merged, **(exact or {})}


def _children(definition: _Definition, element_id: str) -> tuple[str, ...]:
    own = definition.children.get(element_id, ())
    general = definition.children.get(_unsliced(element_id), ())
    return own + tuple(n for n in general if n not in own)


def _slices(definition: _Definition, element_id: str, name: str) -> tuple[str, ...]:
    own = definition.slices.get(f"{element_id}.{name}", ())
    general = definition.slices.get(f"{_unsliced(element_id)}.{name}", ())
    return own + tuple(s for s in general if s not in own)


# Terminology ---------------------------------------------------------------------------------------


def _canonical(url: str) -> str:
    return url.split("|", 1)[0]


def _concepts(system: str, concepts: Iterable[Json]) -> Iterator[tuple[str, str]]:
    for concept in concepts:
        yield system, concept["code"]
        yield from _concepts(system, concept.get("concept", ()))


def _expand(
    url: str, valuesets: Mapping[str, Json], codesystems: Mapping[str, Json], seen: set[str]
) -> Codes | str:
    """The codes of a ValueSet, or why they cannot be worked out offline."""
    url = _canonical(url)
    valueset = valuesets.get(url)
    if valueset is None:
        return f"ValueSet {url} not loaded"
    if url in seen:
        return f"ValueSet {url} includes itself"
    compose = valueset.get("compose")
    if compose is None:
        return f"ValueSet {url} has no compose"
    codes: set[tuple[str, str]] = set()
    for key in ("include", "exclude"):
        for part in compose.get(key, ()):
            found = _compose_part(part, valuesets, codesystems, seen | {url})
            if isinstance(found, str):
                return found
            if key == "include":
                codes |= found
            else:
                codes -= found
    return frozenset(codes)


def _compose_part(
    part: Json, valuesets: Mapping[str, Json], codesystems: Mapping[str, Json], seen: set[str]
) -> Codes | str:
    if "filter" in part:
        return f"filter on {part.get('system')}"
    sets: list[Codes] = []
    system = part.get("system")
    if system and "concept" in part:
        sets.append(frozenset(_concepts(system, part["concept"])))
    elif system:
        codesystem = codesystems.get(_canonical(system))
        if codesystem is None or codesystem.get("content") != "complete":
            return f"CodeSystem {system} not available"
        sets.append(frozenset(_concepts(system, codesystem.get("concept", ()))))
    for other in part.get("valueSet", ()):
        found = _expand(other, valuesets, codesystems, seen)
        if isinstance(found, str):
            return found
        sets.append(found)
    if not sets:
        return "empty compose part"
    result = sets[0]
    for more in sets[1:]:
        result &= more
    return result


def _required_valueset(element: Json) -> str | None:
    binding = element.get("binding", {})
    if binding.get("strength") == "required" and "valueSet" in binding:
        return _canonical(binding["valueSet"])
    return None


def _unchecked(
    definitions: Mapping[str, _Definition],
    expansions: Mapping[str, Codes],
    valuesets: Mapping[str, Json],
    codesystems: Mapping[str, Json],
) -> Iterator[str]:
    """What ``check`` cannot verify, for every definition reachable from a loaded resource profile."""
    todo = [url for url, d in definitions.items() if d.kind == "resource"]
    seen: set[str] = set()
    while todo:
        url = todo.pop()
        if url in seen or url not in definitions:
            continue
        seen.add(url)
        for element_id, element in definitions[url].elements.items():
            valueset = _required_valueset(element)
            if valueset and valueset not in expansions:
                reason = _expand(valueset, valuesets, codesystems, set())
                yield f"{element_id}: required binding to {valueset} not checked ({reason})"
            slicing = element.get("slicing")
            if slicing and _unsliced(element_id).rsplit(".", 1)[-1] not in _EXTENSIONS:
                for d in slicing.get("discriminator", ()):
                    if d.get("type") not in ("value", "pattern"):
                        yield f"{element_id}: slicing by {d.get('type')} is not evaluated"
            for t in element.get("type", ()):
                targets = [*t.get("profile", ())] or [BASE + t.get("code", "")]
                for target in targets:
                    if target in definitions:
                        todo.append(target)
                    elif t.get("profile"):
                        yield f"{element_id}: profile {target} not loaded (checked against its base type)"


# Walking a resource ---------------------------------------------------------------------------------


def _matches(pattern: Any, value: Any) -> bool:
    """FHIR pattern semantics: everything in the pattern is in the value."""
    if isinstance(pattern, Mapping):
        return isinstance(value, Mapping) and all(_matches(v, value.get(k)) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_matches(p, v) for v in value) for p in pattern)
    return bool(pattern == value)


def _values_at(value: Any, path: str) -> list[Any]:
    found = [value]
    for part in path.split("."):
        if part == "$this":
            continue
        step: list[Any] = []
        for item in found:
            child = item.get(part) if isinstance(item, Mapping) else None
            step.extend(child if isinstance(child, list) else [] if child is None else [child])
        found = step
    return found


def _each(value: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(value, list):
        return [(f"{path}[{n}]", v) for n, v in enumerate(value)]
    return [(path, value)]


def _profiles(element: Json, code: str | None = None) -> list[str]:
    """The profiles an element's types name (only those of type ``code`` if given)."""
    return [p for t in element.get("type", ()) if code in (None, t.get("code")) for p in t.get("profile", ())]


def _type_name(code: str) -> str:
    return code[:1].upper() + code[1:]


@dataclass(slots=True)
class _Walk:
    rules: Conformance
    require: frozenset[str]
    problems: dict[str, None] = field(default_factory=dict)

    def report(self, problem: str) -> None:
        self.problems.setdefault(problem, None)

    def node(self, definition: _Definition, element_id: str, node: Json, where: str) -> None:
        for name in _children(definition, element_id):
            child_id = f"{element_id}.{name}"
            element = _element(definition, child_id)
            if element is None and _slices(definition, element_id, name):
                element = {}  # only its slices are constrained here
            if element is not None:
                self._child(definition, child_id, name, element, node, where)
        for key, value in node.items():
            if key.startswith("_"):  # a primitive's id and extensions
                for path, item in _each(value, f"{where}.{key}"):
                    if isinstance(item, Mapping):
                        self._extensions(item, path)

    def _items(self, node: Json, name: str, element: Json, where: str) -> list[tuple[str, Any, str | None]]:
        """(path, value, type code) of every value of element ``name`` in ``node``."""
        if name.endswith("[x]"):
            stem = name[:-3]
            allowed = {_type_name(t["code"]): t["code"] for t in element.get("type", ())}
            keys = [k for k in node if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()]
            out = []
            for key in keys:
                suffix = key[len(stem) :]
                if allowed and suffix not in allowed:
                    self.report(f"{where}.{key}: type {suffix} is not allowed for {name}")
                out.append((f"{where}.{key}", node[key], allowed.get(suffix)))
            return out
        codes = [t["code"] for t in element.get("type", ())]
        code = codes[0] if len(codes) == 1 else None
        if name not in node:
            # A primitive present only through its extensions (``_birthDate``) is still present.
            return [(f"{where}._{name}", None, code)] if f"_{name}" in node else []
        return [(path, value, code) for path, value in _each(node[name], f"{where}.{name}")]

    def _child(
        self, definition: _Definition, child_id: str, name: str, element: Json, node: Json, where: str
    ) -> None:
        items = self._items(node, name, element, where)
        self._cardinality(child_id, element, len(items), f"{where}.{name}")
        membership = self._slice_members(definition, child_id, name, element, items, where)
        for n, (path, value, code) in enumerate(items):
            rules_id = membership.get(n, child_id)
            rules = _element(definition, rules_id) or element
            self._value(rules_id, rules, value, path)
            if not isinstance(value, Mapping):
                continue
            if name in _EXTENSIONS:
                self._extension(value, path)
            if _children(definition, rules_id):
                self.node(definition, rules_id, value, path)
            self._datatype(rules, code, value, path)

    def _cardinality(self, element_id: str, element: Json, count: int, path: str) -> None:
        minimum = int(element.get("min", 0))
        if element_id in self.require:
            minimum = max(minimum, 1)
        if count < minimum:
            self.report(f"{path}: minimum cardinality {minimum} not met ({element_id})")
        maximum = element.get("max", "*")
        if maximum != "*" and count > int(maximum):
            self.report(f"{path}: maximum cardinality {maximum} exceeded ({element_id})")

    def _slice_members(
        self,
        definition: _Definition,
        child_id: str,
        name: str,
        element: Json,
        items: list[tuple[str, Any, str | None]],
        where: str,
    ) -> dict[int, str]:
        """Which item belongs to which slice (by index), checking each slice's cardinality."""
        slice_ids = _slices(definition, child_id.rsplit(".", 1)[0], name)
        if not slice_ids:
            return {}
        general = _element(definition, _unsliced(child_id)) or {}
        slicing = element.get("slicing") or general.get("slicing") or {}
        discriminators = slicing.get("discriminator") or (_BY_URL if name in _EXTENSIONS else ())
        membership: dict[int, str] = {}
        for slice_id in slice_ids:
            wanted = [self._discriminant(definition, slice_id, d) for d in discriminators]
            if not wanted or any(w is None for w in wanted):
                continue  # listed in ``skipped``: this slice cannot be told apart
            count = 0
            for n, (_, value, _) in enumerate(items):
                if n in membership:
                    continue
                if all(w is not None and self._discriminated(value, *w) for w in wanted):
                    membership[n] = slice_id
                    count += 1
            rules = _element(definition, slice_id) or {}
            self._cardinality(slice_id, rules, count, f"{where}.{name}:{slice_id.rsplit(':', 1)[-1]}")
        return membership

    @staticmethod
    def _discriminant(definition: _Definition, slice_id: str, discriminator: Json) -> _Wanted | None:
        path = discriminator.get("path", "")
        if discriminator.get("type") not in ("value", "pattern"):
            return None
        target = _element(definition, slice_id if path == "$this" else f"{slice_id}.{path}") or {}
        for key, value in target.items():
            if key.startswith(("fixed", "pattern")):
                return path, key, value
        profiles = _profiles(_element(definition, slice_id) or {})
        if path == "url" and profiles:  # an extension slice is told apart by its definition's url
            return path, "fixedUri", profiles[0]
        return None

    @staticmethod
    def _discriminated(value: Any, path: str, key: str, wanted: Any) -> bool:
        found = _values_at(value, path)
        if key.startswith("fixed"):
            return any(v == wanted for v in found)
        return any(_matches(wanted, v) for v in found)

    def _value(self, element_id: str, element: Json, value: Any, path: str) -> None:
        if value is None:
            return
        for key, wanted in element.items():
            if key.startswith("fixed") and value != wanted:
                self.report(f"{path}: not the fixed value of {element_id}")
            elif key.startswith("pattern") and not _matches(wanted, value):
                self.report(f"{path}: does not match the pattern of {element_id}")
        valueset = _required_valueset(element)
        codes = self.rules.expansions.get(valueset) if valueset else None
        if codes is None:
            return
        if isinstance(value, str):  # code, string, uri
            ok = value in {code for _, code in codes}
        elif isinstance(value, Mapping) and ("coding" in value or "text" in value):  # CodeableConcept
            ok = any((c.get("system"), c.get("code")) in codes for c in value.get("coding", ()))
        elif isinstance(value, Mapping) and ("code" in value or "system" in value):  # Coding
            ok = (value.get("system"), value.get("code")) in codes
        else:
            return  # a shape a binding does not apply to
        if not ok:
            self.report(f"{path}: code not in the required value set {valueset}")

    def _datatype(self, element: Json, code: str | None, value: Json, path: str) -> None:
        if code is None or code in ("Element", "BackboneElement", "Extension"):
            return
        profiles = _profiles(element, code)
        definition = next((self.rules.definitions[p] for p in profiles if p in self.rules.definitions), None)
        definition = definition or self.rules.definitions.get(BASE + code)
        if definition is not None and definition.kind == "complex-type":
            self.node(definition, definition.type, value, path)

    def _extension(self, extension: Json, path: str) -> None:
        url = extension.get("url")
        definition = self.rules.definitions.get(url) if isinstance(url, str) else None
        if definition is None or definition.type != "Extension":
            definition = self.rules.definitions.get(BASE + "Extension")
        has_value = any(k.startswith("value") and k[5:6].isupper() for k in extension)
        if has_value == bool(extension.get("extension")):
            self.report(f"{path}: needs a value or nested extensions, not both (ext-1)")
        if definition is not None:
            self.node(definition, definition.type, extension, path)

    def _extensions(self, element: Json, path: str) -> None:
        for key in _EXTENSIONS:
            for n, extension in enumerate(element.get(key, ())):
                if isinstance(extension, Mapping):
                    self._extension(extension, f"{path}.{key}[{n}]")
