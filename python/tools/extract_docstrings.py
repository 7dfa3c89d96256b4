"""Carries the doc comments of micache's public headers into the Python bindings.

Reads every ``///`` block and trailing ``///<`` comment of the given headers
and writes a C++ header of string constants, one per documented name, that the
bindings pass to nanobind as docstrings (and stubgen then copies into the
.pyi). A name the bindings ask for that no header documents is a compile
error, so a doc comment cannot silently go missing from Python.

Keys, and the constants they become (``MICACHE_DOC(Class, member)``):

- ``Class`` for a class, struct or enum: ``micache_doc::Class``;
- ``Class.member`` for a member function, field or enumerator:
  ``micache_doc::Class__member``; a constructor is ``Class.__init__``
  (``Class__init``);
- ``name`` for a namespace-level function: ``micache_doc::name``.

The doc block of a declaration also documents the declarations on the lines
right after it that have none of their own and the same return and parameter
types (``Tensor keys(std::size_t layer)`` then ``Tensor values(std::size_t
layer)``). Overloads' blocks are joined, blank line between.
Declarations inside nested namespaces (``micache::eviction``) are skipped.

Usage: extract_docstrings.py OUTPUT HEADER...
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_TYPE_DECL = re.compile(r"^\s*(?:enum\s+class|class|struct)\s+(\w+)\s*(?::[^;{]*)?(?:\{.*)?$")
_NAMESPACE = re.compile(r"^\s*namespace\s+(\w+)\s*\{")
_CALL_NAME = re.compile(r"(~?\w+|operator\S+)\s*\(")
_FIELD_NAME = re.compile(r"(\w+)\s*(?:=[^=].*|\{[^}]*\})?;\s*$")
_ENUMERATOR = re.compile(r"^\s*(\w+)\s*(?:=\s*[^,]+)?,?\s*$")
_NOT_NAMES = {"const", "noexcept", "override", "default", "delete", "return"}


def _signature(code: str, name: str) -> str:
    """The declaration with its name taken out: equal for declarations a shared doc block may cover."""
    return re.sub(r"\s+", " ", code.replace(name, "@", 1)).strip()


def _declared_name(code: str) -> str | None:
    """The name a declaration's first line declares, or None for lines that declare nothing bindable."""
    code = code.strip()
    if code.startswith(("using ", "friend ", "template", "#", "}", ":", "private:", "public:", "protected:")):
        return None
    call = _CALL_NAME.search(code)
    match = call or _FIELD_NAME.search(code)
    name = match.group(1) if match is not None else None
    if name is None or name in _NOT_NAMES or name.startswith(("operator", "~")):
        return None
    return name


class _Extractor:
    """Walks headers line by line, keeping the scopes its braces open."""

    def __init__(self) -> None:
        self.docs: dict[str, list[str]] = {}
        # One entry per open brace: ("type", name), ("namespace", name) or ("body", "").
        self._scopes: list[tuple[str, str]] = []

    def _add(self, key: str, text: str) -> None:
        blocks = self.docs.setdefault(key, [])
        if text not in blocks:
            blocks.append(text)

    def _documentable(self) -> bool:
        return all(kind == "type" or (kind == "namespace" and name == "micache") for kind, name in self._scopes)

    def _key(self, name: str) -> str:
        classes = [scope_name for kind, scope_name in self._scopes if kind == "type"]
        if not classes:
            return name
        owner = classes[-1]
        return f"{owner}.__init__" if name == owner else f"{owner}.{name}"

    def _track_braces(self, code: str, opened: tuple[str, str]) -> None:
        for char in code:
            if char == "{":
                self._scopes.append(opened)
                opened = ("body", "")
            elif char == "}" and self._scopes:
                self._scopes.pop()

    def read(self, path: Path) -> None:
        block: list[str] = []
        # The doc and signature of the declaration just read, for those right after it.
        pending: tuple[str, str] | None = None
        parens = 0  # parentheses left open by the code lines read: > 0 within a declaration's arguments
        for raw in path.read_text().splitlines():
            stripped = raw.strip()
            if stripped.startswith("///") and not stripped.startswith("///<"):
                block.append(stripped[3:].removeprefix(" "))
                continue
            if stripped.startswith("//"):
                continue
            text = "\n".join(block).strip()
            block = []
            if not stripped:
                pending = None
                continue
            trailing = raw.split("///<", 1)[1].strip() if "///<" in raw else ""
            code = raw.split("//", 1)[0].rstrip()
            type_decl = _TYPE_DECL.match(code)
            namespace = _NAMESPACE.match(code)
            opened = ("body", "")
            if type_decl is not None:
                opened = ("type", type_decl.group(1))
            elif namespace is not None:
                opened = ("namespace", namespace.group(1))
            if self._documentable() and parens == 0 and namespace is None:
                enumerator = _ENUMERATOR.match(code) if self._scopes and self._scopes[-1][0] == "type" else None
                if type_decl is not None:
                    name: str | None = type_decl.group(1)
                elif enumerator is not None:
                    name = enumerator.group(1)
                else:
                    name = _declared_name(code)
                signature = _signature(code, name) if name else ""
                shared = pending[0] if pending and pending[1] == signature and type_decl is None else None
                doc = text or trailing or shared
                if name is not None and doc:
                    self._add(self._key(name), doc)
                pending = None if trailing or type_decl is not None or not doc else (doc, signature)
            self._track_braces(code, opened)
            parens += code.count("(") - code.count(")")


def _identifier(key: str) -> str:
    return key.replace(".__init__", "__init").replace(".", "__")


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    extractor = _Extractor()
    for header in sorted(argv[2:]):
        extractor.read(Path(header))
    lines = [
        "// Generated by python/tools/extract_docstrings.py from include/micache/*.hpp; do not edit.",
        "#pragma once",
        "",
        "namespace micache_doc {",
    ]
    for key in sorted(extractor.docs):
        text = "\n\n".join(extractor.docs[key])
        lines.append(f'inline constexpr const char {_identifier(key)}[] = R"micache_doc({text})micache_doc";')
    lines += [
        "}  // namespace micache_doc",
        "",
        "/// The doc comment of `Class::member` (or of a free function: MICACHE_DOC_FN(name)).",
        "#define MICACHE_DOC(cls, member) ::micache_doc::cls##__##member",
        "#define MICACHE_DOC_INIT(cls) ::micache_doc::cls##__init",
        "#define MICACHE_DOC_TYPE(cls) ::micache_doc::cls",
        "#define MICACHE_DOC_FN(name) ::micache_doc::name",
        "",
    ]
    output = Path(argv[1])
    content = "\n".join(lines)
    if not output.exists() or output.read_text() != content:
        output.write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
