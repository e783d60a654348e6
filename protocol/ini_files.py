"""Read a configuration file and the files it includes from disk: the I/O half of ini.py.

`protocol/ini.py` parses text; this module is the `IniSource` that reads it
from the filesystem, shared by the broker and the supervisor, which both load
the same file.
"""

from __future__ import annotations

import glob
import os
import sys

from chapiteau.protocol.httpd import with_httpd
from chapiteau.protocol.ini import ConfigError, IniFile, parse_ini


class _Files:
    """The filesystem as an `IniSource`: UTF-8 files and glob matches."""

    def text(self, path: str) -> str:
        try:
            with open(path, encoding="utf-8") as stream:
                return stream.read()
        except UnicodeDecodeError as error:
            raise ConfigError(f"not valid UTF-8 text ({error.reason})", file=path) from None
        except OSError as error:
            raise ConfigError(f"cannot read the file: {error.strerror}", file=path) from None

    def matches(self, pattern: str) -> list[str]:
        return [os.path.abspath(match) for match in glob.glob(pattern) if os.path.isfile(match)]


def read_ini_file(path: str | os.PathLike[str]) -> IniFile:
    """Read the file ``path`` and the files its [circus] section includes, and parse them.

    Raises ConfigError for a missing, unreadable or undecodable file and for a
    line that is neither a comment, a header, an option nor a continuation.
    ``httpd = true`` adds the dashboard's sections (`with_httpd`), run by this interpreter.
    """
    return with_httpd(parse_ini(os.path.abspath(os.fspath(path)), _Files()), sys.executable)
