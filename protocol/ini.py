"""Parse a configuration written in Circus's INI dialect: text in, sections out.

No I/O here: `parse_ini` gets the text of each file, and the files an include
pattern names, from an `IniSource` the caller passes
(`chapiteau.protocol.ini_files.read_ini_file` is the one that reads the disk).

Theory of operation: the reader turns the main file, then its includes, into
one ordered map of sections. The rules are Circus 0.19's StrictConfigParser
and its include rules, kept exactly so that a Circus config means the same here:

* comment lines start with ``#`` or ``;`` in column 0, or are a line whose
  first word is ``rem`` (any case) with no leading whitespace;
* ``key = value`` or ``key: value``; the key is case-sensitive and stripped;
* an inline comment is a ``;`` preceded by whitespace, and only the first ``;``
  of the value is considered (``sh -c 'a;b' ; note`` keeps everything);
* the FIRST occurrence of a key in a section wins, across included files too;
  a repeated section header extends the section;
* lines starting with whitespace continue the previous value (joined with
  ``\\n``); the literal value ``""`` is the empty string;
* ``[DEFAULT]`` keys appear in every section unless the section sets them;
* no ``%`` interpolation, no synthetic ``__name__`` key (Circus leaks one);
* ``include`` / ``include_dir`` come only from the main file's ``[circus]``
  section and are resolved against the main file's directory. Circus reads the
  matches in ``glob`` order, which the filesystem decides; here they are read in
  sorted order so the result never depends on the directory's layout;
* a section without any option is skipped.

Values are returned raw: ``$(circus.env.X)`` expansion is a separate step
(`expand_env`, `Section.expanded`), because which environment applies depends
on the section.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping

from chapiteau.protocol.records import Record
from chapiteau.protocol.words import (
    OptionError,
    parse_bool,
    parse_float,
    parse_int,
    parse_octal,
)

# typing only for the type checker: the broker keeps every module it imports (typing: 0.6 MiB).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol, TypeVar

    _T = TypeVar("_T")
    _D = TypeVar("_D")

    class IniSource(Protocol):
        """Where `parse_ini` gets the text of a file and the files an include pattern names."""

        def text(self, path: str) -> str:
            """The text of the file ``path``; ConfigError when it cannot be read."""
            ...

        def matches(self, pattern: str) -> list[str]:
            """The absolute paths of the files that the glob ``pattern`` (absolute) names."""
            ...


DEFAULT_SECTION = "DEFAULT"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
"""The values of ``[circus] loglevel`` (and of ``--log-level``), most severe first."""

_SECTION_HEADER = re.compile(r"\[(?P<header>.+)\]")
_OPTION_LINE = re.compile(r"(?P<key>.*?)\s*(?P<delimiter>[=:])\s*(?P<value>.*)$")

# $(circus.KEY) and ((circus.KEY)), case-insensitive.
_CIRCUS_VARIABLE = re.compile(
    r"\$\(circus\.(?P<dollar>[\w.\-]+)\)|\(\(circus\.(?P<parens>[\w.\-]+)\)\)",
    re.IGNORECASE,
)


class ConfigError(Exception):
    """A mistake in a configuration file.

    ``str()`` is ``file:section:key: message``; parts that are not known are
    omitted.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.section = section
        self.key = key
        where = ":".join(part for part in (file, section, key) if part is not None)
        super().__init__(f"{where}: {message}" if where else message)


class Section(Record):
    """One section of the configuration, after merging every file and [DEFAULT]."""

    __slots__ = ("name", "options", "sources", "file")

    def __init__(
        self,
        name: str,
        options: dict[str, str],
        sources: dict[str, str] | None = None,
        file: str = "",
    ) -> None:
        self.name = name
        self.options = options
        # The file each option came from.
        self.sources = {} if sources is None else sources
        # The file the section first appeared in ("" when built in memory).
        self.file = file

    def file_of(self, key: str) -> str:
        """Return the file that the option ``key`` was read from."""
        return self.sources.get(key, self.file)

    def error(self, key: str | None, message: str) -> ConfigError:
        """Build a ConfigError that points at ``key`` of this section."""
        file = self.file if key is None else self.file_of(key)
        return ConfigError(message, file=file or None, section=self.name, key=key)

    def expanded(self, env: Mapping[str, str]) -> Section:
        """Return a copy whose values have ``$(circus.env.X)`` expanded against ``env``."""
        options = {key: expand_env(value, env) for key, value in self.options.items()}
        return Section(self.name, options, self.sources, self.file)

    def get_str(self, key: str, default: str | None = None) -> str | None:
        """Return the raw value of ``key``, or ``default`` when it is absent."""
        return self.options.get(key, default)

    def get_bool(self, key: str, default: bool) -> bool:
        """Parse ``key`` as a boolean word (`chapiteau.protocol.words.parse_bool`)."""
        return self._parsed(key, parse_bool, default)

    def get_int(self, key: str, default: int | None) -> int | None:
        """Parse ``key`` as a decimal integer."""
        return self._parsed(key, parse_int, default)

    def get_float(self, key: str, default: float | None) -> float | None:
        """Parse ``key`` as a number of seconds or any other real number."""
        return self._parsed(key, parse_float, default)

    def get_octal(self, key: str, default: int | None) -> int | None:
        """Parse ``key`` as an octal number such as ``077``, ``0o77`` or ``0``."""
        return self._parsed(key, parse_octal, default)

    def _parsed(self, key: str, parse: Callable[[str], _T], default: _D) -> _T | _D:
        value = self.options.get(key)
        if value is None:
            return default
        try:
            return parse(value)
        except OptionError as exc:
            raise self.error(key, str(exc)) from None


class IniFile(Record):
    """Every section of a configuration file and of the files it includes."""

    __slots__ = ("path", "sections", "files", "warnings", "defaults")

    def __init__(
        self,
        path: str,
        sections: dict[str, Section],
        files: list[str],
        warnings: list[str],
        defaults: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        self.sections = sections
        self.files = files
        self.warnings = warnings
        # The [DEFAULT] keys, which every section above already contains.
        self.defaults = {} if defaults is None else defaults

    def sections_with_prefix(self, prefix: str) -> list[Section]:
        """Return the sections whose name starts with ``prefix``, in file order."""
        return [section for name, section in self.sections.items() if name.startswith(prefix)]


class _RawSection:
    """A section while files are still being read: values are lists of lines."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[str, list[str]] = {}
        self.sources: dict[str, str] = {}


class _Reader:
    """Accumulate sections over several files with Circus's first-wins rule."""

    def __init__(self) -> None:
        self.sections: dict[str, _RawSection] = {}
        self.defaults: _RawSection | None = None

    def parse(self, text: str, path: str) -> None:
        section: _RawSection | None = None
        # The lines that a continuation line extends: None after a header, a
        # throwaway list after an ignored duplicate key so that its
        # continuation lines are ignored with it.
        current: list[str] | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line[0] in "#;":
                continue
            if line[0] in "rR" and line.split(None, 1)[0].lower() == "rem":
                continue
            if line[0].isspace() and section is not None and current is not None:
                value = line.strip()
                if value:
                    current.append(value)
                continue
            header = _SECTION_HEADER.match(line)
            if header:
                section = self._section(header.group("header"), path)
                current = None
                continue
            if section is None:
                raise ConfigError(
                    f"line {number}: {line.strip()!r} is outside any section; "
                    "start the file with a [section] header",
                    file=path,
                )
            option = _OPTION_LINE.match(line)
            if option is None or not option.group("key").strip():
                raise ConfigError(
                    f"line {number}: cannot parse {line.strip()!r}; "
                    "expected 'key = value' or '[section]'",
                    file=path,
                )
            key = option.group("key").strip()
            if key in section.lines:
                current = []
                continue
            current = [_option_value(line, option)]
            section.lines[key] = current
            section.sources[key] = path

    def _section(self, name: str, path: str) -> _RawSection:
        if name == DEFAULT_SECTION:
            if self.defaults is None:
                self.defaults = _RawSection(path)
            return self.defaults
        if name not in self.sections:
            self.sections[name] = _RawSection(path)
        return self.sections[name]

    def result(self) -> dict[str, Section]:
        defaults = self.defaults or _RawSection("")
        sections = {}
        for name, raw in self.sections.items():
            options = {key: "\n".join(lines) for key, lines in raw.lines.items()}
            sources = dict(raw.sources)
            for key, lines in defaults.lines.items():
                if key not in options:
                    options[key] = "\n".join(lines)
                    sources[key] = defaults.sources[key]
            if options:
                sections[name] = Section(name, options, sources, raw.file)
        return sections


def _option_value(line: str, option: re.Match[str]) -> str:
    value = option.group("value")
    semicolon = value.find(";")
    if semicolon != -1:
        position = option.start("value") + semicolon
        if position > 0 and line[position - 1].isspace():
            value = value[:semicolon]
    value = value.strip()
    return "" if value == '""' else value


def parse_ini(main: str, source: IniSource) -> IniFile:
    """Parse the file ``main`` (an absolute path) and the files its [circus] section includes.

    Raises ConfigError for a file ``source`` cannot give and for a line that is
    neither a comment, a header, an option nor a continuation.
    """
    reader = _Reader()
    reader.parse(source.text(main), main)
    files = [main]
    warnings: list[str] = []
    circus = reader.result().get("circus")
    if circus is not None:
        directory = posixpath.dirname(main)
        patterns = (circus.get_str("include") or "").split()
        patterns += [
            posixpath.join(folder, "*.ini")
            for folder in (circus.get_str("include_dir") or "").split()
        ]
        for pattern in patterns:
            matches = sorted(source.matches(posixpath.join(directory, pattern)))
            if not matches:
                warnings.append(f"{main}: include pattern {pattern!r} matched no file")
            for included in matches:
                if included not in files:
                    reader.parse(source.text(included), included)
                    files.append(included)
    defaults = reader.defaults.lines if reader.defaults else {}
    default_values = {key: "\n".join(lines) for key, lines in defaults.items()}
    return IniFile(main, reader.result(), files, warnings, default_values)


def replace_variables(value: str, variables: Mapping[str, object]) -> str:
    """Replace ``$(circus.KEY)`` and ``((circus.KEY))`` by ``variables[key]``.

    ``variables`` is keyed by the lower-cased name without the ``circus.``
    prefix (e.g. ``"env.home"``, ``"wid"``); matching is case-insensitive and
    an unknown key is left in place verbatim, as Circus does.
    """

    def replace(match: re.Match[str]) -> str:
        name = (match.group("dollar") or match.group("parens")).lower()
        if name in variables:
            return str(variables[name])
        return match.group(0)

    return _CIRCUS_VARIABLE.sub(replace, value)


def env_variables(env: Mapping[str, str]) -> dict[str, str]:
    """Key ``env`` for `replace_variables`: ``HOME`` becomes ``env.home``.

    Names that differ only in case collide; the one later in ``env`` wins, as
    in Circus.
    """
    return {f"env.{name.lower()}": value for name, value in env.items()}


def expand_env(value: str, env: Mapping[str, str]) -> str:
    """Expand ``$(circus.env.X)`` and ``((circus.env.X))`` in ``value`` from ``env``."""
    return replace_variables(value, env_variables(env))


def global_env(ini: IniFile, environ: Mapping[str, str]) -> dict[str, str]:
    """Return ``environ`` plus the [env] section, whose values are expanded against ``environ``.

    This is the environment that config-time ``$(circus.env.X)`` expansion uses
    for every section but the watchers.
    """
    result = dict(environ)
    section = ini.sections.get("env")
    if section is not None:
        result.update(section.expanded(environ).options)
    return result
