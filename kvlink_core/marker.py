"""A link's policy kept with the group it governs: one marker line in the group's description.

The registry (Table storage) is an index, not the only memory: a managed group also carries
its policy, so a lost or new storage account is rebuilt by the next audit. The marker::

    [kvlink v1 mode=merge include=app-*,db-* exclude=*-old tags=env:prod,team expired=keep]

* ``v1`` is the format's version. A marker of another version, or one edited into something
  this module cannot read, is reported by the audit -- never guessed at.
* Lists are comma-separated. Every character outside ``A-Z a-z 0-9 - . _ ~ * ? ! @ / +`` is
  percent-encoded (UTF-8), so ``[`` ``]`` ``,`` ``:`` ``=`` and spaces never appear raw in a value.
* ``tags`` lists ``key`` (any value) or ``key:value``; ``exclude`` and ``tags`` are left out
  when empty. ``expired`` is ``keep`` or ``drop``.

The rest of the description belongs to people: the marker is replaced where it stands, or
appended on a line of its own, and never duplicated. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from .model import Policy
from .names import check_pattern, check_tag

# Azure DevOps documents no length limit for a variable group's description: the 7.1 REST spec
# (VariableGroup / VariableGroupParameters.description: "type": "string", no maxLength), the
# Variablegroups - Add/Update reference pages and "Naming restrictions and conventions" say
# nothing, and MicrosoftDocs/azure-devops-docs#13217 (asking for the group's size limits) is
# open, and terraform-provider-azuredevops validates nothing. 1024 is the only limit found (the
# Azure DevOps stand-in, standins/devops.py, after Azure DevOps Server 2022's validation; not
# verified on Services): kept to, conservatively. Lengths count UTF-16 units, as Azure DevOps'
# naming rules do ("surrogate characters ... count as two characters").
DESCRIPTION_LIMIT = 1024
# The marker may take half of it, so that people keep at least 511 characters of their own.
MARKER_LIMIT = 512
VERSION = 1

_START = re.compile(r"\[\s*kvlink\b", re.IGNORECASE)
_SAFE = "-._~*?!@/+"  # with A-Z a-z 0-9: written as they are
_VALUE = re.compile(r"(?:[A-Za-z0-9\-._~*?!@/+]|%[0-9A-Fa-f]{2})*")
_KEYS = ("mode", "include", "exclude", "tags", "expired")
_REQUIRED = ("mode", "include", "expired")


class MarkerError(ValueError):
    """A marker kvlink cannot read; the message says why."""


class TooLongError(ValueError):
    """A marker or description over the limit kvlink keeps to."""


def utf16_len(text: str) -> int:
    """Length as Azure DevOps counts it: a character outside the BMP is two."""
    return len(text.encode("utf-16-le")) // 2


def render(policy: Policy) -> str:
    """The marker for a policy; :class:`TooLongError` past :data:`MARKER_LIMIT`."""
    parts = [f"[kvlink v{VERSION}", f"mode={policy.mode}", "include=" + _list(policy.include)]
    if policy.exclude:
        parts.append("exclude=" + _list(policy.exclude))
    if policy.tags:
        parts.append("tags=" + ",".join(_enc(k) if v is None else f"{_enc(k)}:{_enc(v)}" for k, v in policy.tags))
    parts.append(f"expired={'keep' if policy.keep_expired else 'drop'}]")
    marker = " ".join(parts)
    if utf16_len(marker) > MARKER_LIMIT:
        raise TooLongError(
            f"the link's policy is too long to keep in the group's description: its marker would be "
            f"{utf16_len(marker)} characters, kvlink allows {MARKER_LIMIT} (fewer or shorter patterns or tags)"
        )
    return marker


def parse(marker: str) -> Policy:
    """The policy a marker holds; :class:`MarkerError` saying what is wrong with it otherwise."""
    if not marker.endswith("]"):
        raise MarkerError("the marker is not closed with ']' on its line")
    tokens = marker[1:-1].split()
    if not tokens or tokens[0] != "kvlink":
        raise MarkerError(f"the marker starts with {tokens[0] if tokens else ''!r}, not 'kvlink'")
    version = re.fullmatch(r"v(\d{1,4})", tokens[1]) if len(tokens) > 1 else None
    if version is None:
        raise MarkerError("the marker has no version (v1) after 'kvlink'")
    if int(version.group(1)) != VERSION:
        raise MarkerError(f"the marker's version v{version.group(1)} is not one this kvlink reads (v{VERSION})")
    fields: dict[str, str] = {}
    for token in tokens[2:]:
        key, sep, value = token.partition("=")
        if not sep or key not in _KEYS:
            raise MarkerError(f"{token!r} is not one of {', '.join(k + '=...' for k in _KEYS)}")
        if key in fields:
            raise MarkerError(f"{key}= appears twice")
        fields[key] = value
    missing = [key for key in _REQUIRED if key not in fields]
    if missing:
        raise MarkerError(f"the marker lacks {', '.join(k + '=' for k in missing)}")
    if fields["mode"] not in ("merge", "mirror"):
        raise MarkerError(f"mode={fields['mode']} is not merge or mirror")
    if fields["expired"] not in ("keep", "drop"):
        raise MarkerError(f"expired={fields['expired']} is not keep or drop")
    include = _patterns(fields["include"], "include")
    if not include:
        raise MarkerError("include= names no pattern")
    return Policy(
        include=include,
        exclude=_patterns(fields.get("exclude", ""), "exclude"),
        tags=_tags(fields.get("tags", "")),
        keep_expired=fields["expired"] == "keep",
        mode="mirror" if fields["mode"] == "mirror" else "merge",
    )


def read(description: str | None) -> Policy | None:
    """The policy in a description: None without a marker, :class:`MarkerError` if unreadable."""
    spans = _spans(description or "")
    if not spans:
        return None
    if len(spans) > 1:
        raise MarkerError(f"the description holds {len(spans)} kvlink markers; kvlink writes one")
    start, end = spans[0]
    return parse((description or "")[start:end])


def with_marker(description: str | None, policy: Policy) -> str:
    """``description`` carrying the policy's marker: replaced where it stood, else appended on its
    own line; every other character kept. :class:`TooLongError` past :data:`DESCRIPTION_LIMIT`."""
    text = description or ""
    marker = render(policy)
    spans = _spans(text)
    if spans:
        start, end = spans[0]
        result = _cut(text[:start] + marker + text[end:], spans[1:], shift=len(marker) - (end - start))
    else:
        result = f"{text.rstrip()}\n{marker}" if text.strip() else marker
    if utf16_len(result) > DESCRIPTION_LIMIT:
        raise TooLongError(
            f"the group's description is {utf16_len(text)} characters; with kvlink's marker "
            f"({utf16_len(marker)}) it would be {utf16_len(result)}, over the {DESCRIPTION_LIMIT} kvlink "
            "keeps to (Azure DevOps documents no limit): shorten the description"
        )
    return result


def without_marker(description: str | None) -> str:
    """``description`` with every kvlink marker (and the line break before it) taken out."""
    text = description or ""
    return _cut(text, _spans(text), shift=0)


def group_policy(raw: Mapping[str, Any]) -> Policy | None:
    """The policy a group carries (its description; else its project references' descriptions, which
    must agree): None without a marker, :class:`MarkerError` if unreadable."""
    found = read(_text(raw.get("description")))
    if found is not None:
        return found
    policies = {read(_text(ref.get("description"))) for ref in _references(raw)} - {None}
    if len(policies) > 1:
        raise MarkerError("the group's project references carry different kvlink markers")
    return next(iter(policies), None)


def marked_group(raw: Mapping[str, Any], policy: Policy) -> dict[str, Any] | None:
    """The group with the policy's marker in its description and its project references' (None
    when each already reads as ``policy``); :class:`TooLongError` if a description cannot hold it."""
    changed = False

    def mark(description: Any) -> str:
        nonlocal changed
        text = _text(description)
        try:
            if read(text) == policy:
                return text
        except MarkerError:
            pass  # a broken marker is replaced by the link's own
        changed = True
        return with_marker(text, policy)

    group = {**raw, "description": mark(raw.get("description"))}
    if "variableGroupProjectReferences" in raw:
        group["variableGroupProjectReferences"] = [
            {**ref, "description": mark(ref.get("description"))} for ref in _references(raw)
        ]
    return group if changed else None


def unmarked_group(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """The group without kvlink's marker anywhere (None when it has none): a link undone."""
    texts = [_text(raw.get("description"))] + [_text(ref.get("description")) for ref in _references(raw)]
    if not any(_spans(text) for text in texts):
        return None
    group = {**raw, "description": without_marker(_text(raw.get("description")))}
    if "variableGroupProjectReferences" in raw:
        group["variableGroupProjectReferences"] = [
            {**ref, "description": without_marker(_text(ref.get("description")))} for ref in _references(raw)
        ]
    return group


# -- helpers -----------------------------------------------------------------------------------
def _spans(text: str) -> list[tuple[int, int]]:
    """Where markers stand: from ``[kvlink`` to the first ``]``, or to the line's end if unclosed."""
    spans = []
    position = 0
    while (match := _START.search(text, position)) is not None:
        start = match.start()
        close = text.find("]", start)
        line_end = text.find("\n", start)
        if close == -1 or (line_end != -1 and line_end < close):
            end = len(text) if line_end == -1 else line_end
        else:
            end = close + 1
        spans.append((start, end))
        position = end
    return spans


def _cut(text: str, spans: list[tuple[int, int]], *, shift: int) -> str:
    """``text`` without ``spans`` (offsets before a change of ``shift`` characters at the first one)."""
    for start, end in reversed([(s + shift, e + shift) for s, e in spans]):
        before, after = text[:start], text[end:]
        if not after.strip():
            text = before.rstrip()
        elif not before.strip():
            text = after.lstrip()
        else:
            text = before + after
    return text


def _enc(value: str) -> str:
    return quote(value, safe=_SAFE)


def _list(values: tuple[str, ...]) -> str:
    return ",".join(_enc(v) for v in values)


def _dec(raw: str, where: str) -> str:
    if not _VALUE.fullmatch(raw):
        raise MarkerError(f"{where}: {raw!r} holds a character that must be percent-encoded")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise MarkerError(f"{where}: {raw!r} is not percent-encoded UTF-8") from None


def _patterns(raw: str, key: str) -> tuple[str, ...]:
    if not raw:
        return ()
    patterns = tuple(_dec(item, f"{key}=") for item in raw.split(","))
    if len(patterns) > 50:
        raise MarkerError(f"{key}= holds more than 50 patterns")
    for pattern in patterns:
        if problem := check_pattern(pattern):
            raise MarkerError(f"{key}=: {problem}")
    return patterns


def _tags(raw: str) -> tuple[tuple[str, str | None], ...]:
    if not raw:
        return ()
    tags: dict[str, str | None] = {}
    for item in raw.split(","):
        key_raw, sep, value_raw = item.partition(":")
        key = _dec(key_raw, "tags=")
        value = _dec(value_raw, "tags=") if sep else None
        if key in tags:
            raise MarkerError(f"tags=: tag {key!r} appears twice")
        if problem := check_tag(key, value):
            raise MarkerError(f"tags=: {problem}")
        tags[key] = value
    if len(tags) > 15:
        raise MarkerError("tags= requires more than 15 tags")
    return tuple(sorted(tags.items()))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _references(raw: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    refs = raw.get("variableGroupProjectReferences") or []
    return [ref for ref in refs if isinstance(ref, Mapping)]
