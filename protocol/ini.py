"""Read a configuration file written in Circus's INI dialect.

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

import glob
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_SECTION = "DEFAULT"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
"""The values of ``[circus] loglevel`` (and of ``--log-level``), most severe first."""

_SECTION_HEADER = re.compile(r"\[(?P<header>.+)\]")
_OPTION_LINE = re.compile(r"(?P<key>.*?)\s*(?P<delimiter>[=:])\s*(?P<value>.*)$")

_TRUE = frozenset({"yes", "true", "on", "1"})
_FALSE = frozenset({"no", "false", "off", "0"})

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


@dataclass(frozen=True)
class Section:
    """One section of the configuration, after merging every file and [DEFAULT]."""

    name: str
    options: dict[str, str]
    sources: dict[str, str] = field(default_factory=dict, repr=False)
    """The file each option came from."""
    file: str = field(default="", repr=False)
    """The file the section first appeared in ("" when built in memory)."""

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
        """Parse ``key`` as yes/true/on/1 or no/false/off/0 (any case)."""
        value = self.options.get(key)
        if value is None:
            return default
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise self.error(key, f"{value!r} is not a boolean; use true or false")

    def get_int(self, key: str, default: int | None) -> int | None:
        """Parse ``key`` as a decimal integer."""
        value = self.options.get(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise self.error(key, f"{value!r} is not an integer") from None

    def get_float(self, key: str, default: float | None) -> float | None:
        """Parse ``key`` as a number of seconds or any other real number."""
        value = self.options.get(key)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise self.error(key, f"{value!r} is not a number") from None
        if math.isnan(number):
            raise self.error(key, f"{value!r} is not a number")
        return number

    def get_octal(self, key: str, default: int | None) -> int | None:
        """Parse ``key`` as an octal number such as ``077``, ``0o77`` or ``0``."""
        value = self.options.get(key)
        if value is None:
            return default
        digits = value.strip()
        if digits[:2].lower() == "0o":
            digits = digits[2:]
        if not digits or any(char not in "01234567" for char in digits):
            raise self.error(key, f"{value!r} is not an octal number such as 022 or 0o022")
        return int(digits, 8)


@dataclass(frozen=True)
class IniFile:
    """Every section of a configuration file and of the files it includes."""

    path: str
    sections: dict[str, Section]
    files: list[str]
    warnings: list[str]
    defaults: dict[str, str] = field(default_factory=dict)
    """The [DEFAULT] keys, which every section above already contains."""

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

    def read(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as stream:
                text = stream.read()
        except UnicodeDecodeError as error:
            raise ConfigError(f"not valid UTF-8 text ({error.reason})", file=path) from None
        except OSError as error:
            raise ConfigError(f"cannot read the file: {error.strerror}", file=path) from None
        self._parse(text, path)

    def _parse(self, text: str, path: str) -> None:
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


def read_ini(path: str | os.PathLike[str]) -> IniFile:
    """Read ``path`` and the files its [circus] section includes.

    Raises ConfigError for a missing, unreadable or undecodable file and for a
    line that is neither a comment, a header, an option nor a continuation.
    """
    main = os.path.abspath(os.fspath(path))
    reader = _Reader()
    reader.read(main)
    files = [main]
    warnings: list[str] = []
    circus = reader.result().get("circus")
    if circus is not None:
        directory = os.path.dirname(main)
        patterns = (circus.get_str("include") or "").split()
        patterns += [
            os.path.join(folder, "*.ini")
            for folder in (circus.get_str("include_dir") or "").split()
        ]
        for pattern in patterns:
            matches = sorted(
                match
                for match in glob.glob(os.path.join(directory, pattern))
                if os.path.isfile(match)
            )
            if not matches:
                warnings.append(f"{main}: include pattern {pattern!r} matched no file")
            for match in matches:
                included = os.path.abspath(match)
                if included not in files:
                    reader.read(included)
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
