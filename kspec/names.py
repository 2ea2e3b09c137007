"""Kubernetes name validation, as k8s.io/apimachinery/pkg/util/validation does it.

Each check returns ``None`` when the name is valid, else one sentence saying
which rule failed, so callers attach their own span and hint.  Every check
accepts only ASCII letters, digits and ``-_./``: a name that passes can be
written into a rule file, a DNS zone or a shell command as it is.
"""

from __future__ import annotations

import string

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
QUALIFIED_NAME_MAX = 63
LABEL_VALUE_MAX = 63
PORT_NAME_MAX = 15

_LOWER_ALNUM = frozenset(string.ascii_lowercase + string.digits)
_ALNUM = frozenset(string.ascii_letters + string.digits)
_DNS_CHARS = _LOWER_ALNUM | {"-"}
_QNAME_CHARS = _ALNUM | {"-", "_", "."}
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _check_word(value: str, max_len: int, allowed: frozenset[str], allowed_text: str,
                ends: frozenset[str], ends_text: str, first: frozenset[str] | None = None,
                first_text: str = "") -> str | None:
    """The shared shape of every name rule: length, charset, first and last character."""
    if not value:
        return "must not be empty"
    if len(value) > max_len:
        return f"must be no more than {max_len} characters (it has {len(value)})"
    for index, ch in enumerate(value):
        if ch not in allowed:
            return f"must contain only {allowed_text} (found {ch!r} at position {index + 1})"
    start = first if first is not None else ends
    if value[0] not in start:
        return f"must start with {first_text or ends_text} (found {value[0]!r})"
    if value[-1] not in ends:
        return f"must end with {ends_text} (found {value[-1]!r})"
    return None


def _not_string(value: object) -> str | None:
    return None if isinstance(value, str) else f"must be a string, not {type(value).__name__}"


def check_dns1123_label(value: str) -> str | None:
    """RFC 1123 label: namespaces, and the parts of most names (at most 63 of [a-z0-9-])."""
    return _not_string(value) or _check_word(
        value, DNS1123_LABEL_MAX, _DNS_CHARS, "lower case letters, digits and '-'",
        _LOWER_ALNUM, "a lower case letter or digit")


def check_dns1035_label(value: str) -> str | None:
    """RFC 1035 label: Service names, which become DNS labels and must start with a letter."""
    return _not_string(value) or _check_word(
        value, DNS1123_LABEL_MAX, _DNS_CHARS, "lower case letters, digits and '-'",
        _LOWER_ALNUM, "a lower case letter or digit",
        frozenset(string.ascii_lowercase), "a lower case letter")


def check_dns1123_subdomain(value: str) -> str | None:
    """RFC 1123 subdomain: pod, node and most object names (at most 253 characters).

    Like apimachinery, the dot-separated parts are not limited to 63
    characters each; only the whole name is.
    """
    problem = _not_string(value)
    if problem:
        return problem
    if not value:
        return "must not be empty"
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        return f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters (it has {len(value)})"
    for index, part in enumerate(value.split(".")):
        if not part:
            return "must not start or end with '.' or contain '..'"
        problem = _check_word(part, DNS1123_SUBDOMAIN_MAX, _DNS_CHARS, "lower case letters, digits, '-' and '.'",
                              _LOWER_ALNUM, "a lower case letter or digit")
        if problem:
            where = f"part {index + 1} ({part!r})" if "." in value else ""
            return f"{where} {problem}".lstrip()
    return None


def _check_qualified_name(value: str) -> str | None:
    """``[prefix/]name`` as in IsQualifiedName: a DNS subdomain prefix, a 63-character name."""
    parts = value.split("/")
    if len(parts) > 2:
        return "must contain at most one '/' (between an optional DNS subdomain prefix and the name)"
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            return "prefix before '/' must not be empty"
        problem = check_dns1123_subdomain(prefix)
        if problem:
            return f"prefix {prefix!r} {problem}"
    name = parts[-1]
    problem = _check_word(name, QUALIFIED_NAME_MAX, _QNAME_CHARS, "letters, digits, '-', '_' and '.'",
                          _ALNUM, "a letter or digit")
    if problem:
        return f"name part {problem}" if len(parts) == 2 else problem
    return None


def check_label_key(value: str) -> str | None:
    """A label key: optional DNS-subdomain prefix and '/', then a name of at most 63 characters."""
    return _not_string(value) or _check_qualified_name(value)


def check_annotation_key(value: str) -> str | None:
    """An annotation key: a label key, except that the prefix may use upper case letters.

    apimachinery lower-cases the key before the check; only ASCII letters are
    folded here, so a non-ASCII letter that lower-cases to ASCII is refused.
    """
    return _not_string(value) or _check_qualified_name(value.translate(_ASCII_LOWER))


def check_label_value(value: str) -> str | None:
    """A label value: empty, or at most 63 of [A-Za-z0-9-_.] with alphanumeric ends."""
    problem = _not_string(value)
    if problem or value == "":
        return problem
    return _check_word(value, LABEL_VALUE_MAX, _QNAME_CHARS, "letters, digits, '-', '_' and '.'",
                       _ALNUM, "a letter or digit")


def check_port_name(value: str) -> str | None:
    """An IANA service name (IsValidPortName): at most 15 of [a-z0-9-], with a letter, no '--'."""
    problem = _not_string(value)
    if problem:
        return problem
    if not value:
        return "must not be empty"
    if len(value) > PORT_NAME_MAX:
        return f"must be no more than {PORT_NAME_MAX} characters (it has {len(value)})"
    for index, ch in enumerate(value):
        if ch not in _DNS_CHARS:
            return f"must contain only lower case letters, digits and '-' (found {ch!r} at position {index + 1})"
    if not any(ch in string.ascii_lowercase for ch in value):
        return "must contain at least one letter (a-z)"
    if "--" in value:
        return "must not contain consecutive hyphens"
    if value[0] == "-" or value[-1] == "-":
        return "must not begin or end with a hyphen"
    return None
