"""Tests for chapiteau.protocol.ini, the Circus INI dialect reader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chapiteau.protocol.ini import (
    ConfigError,
    IniFile,
    Section,
    expand_env,
    global_env,
    parse_ini,
    replace_variables,
)
from chapiteau.protocol.ini_files import read_ini_file


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def parse(tmp_path: Path, text: str) -> IniFile:
    return read_ini_file(write(tmp_path, "circus.ini", text))


def options(tmp_path: Path, text: str, section: str = "s") -> dict[str, str]:
    return parse(tmp_path, text).sections[section].options


# --- comments and delimiters -------------------------------------------------


def test_hash_and_semicolon_lines_are_comments(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\n# a = 1\n; b = 2\nc = 3\n") == {"c": "3"}


def test_rem_line_is_a_comment(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\nREM a = 1\nrem b\nc = 3\n") == {"c": "3"}


def test_word_starting_with_rem_is_a_key(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\nremote = 1\n") == {"remote": "1"}


def test_semicolon_after_whitespace_starts_an_inline_comment(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\na = value ; note\n") == {"a": "value"}


def test_semicolon_inside_a_word_is_kept(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\na = x;y\n") == {"a": "x;y"}


def test_only_the_first_semicolon_is_considered_as_in_circus(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\ncmd = sh -c 'a;b' ; note\n") == {"cmd": "sh -c 'a;b' ; note"}


def test_inline_hash_is_part_of_the_value(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\nargs = -q  # comment\n") == {"args": "-q  # comment"}


def test_colon_is_a_delimiter(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\nport: 80\n") == {"port": "80"}


def test_key_ends_at_first_delimiter(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\nurl = http://x\n") == {"url": "http://x"}


def test_keys_are_case_sensitive(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\nFoo = 1\nfoo = 2\n") == {"Foo": "1", "foo": "2"}


def test_section_names_are_case_sensitive(tmp_path: Path) -> None:
    ini = parse(tmp_path, "[S]\na = 1\n[s]\na = 2\n")
    assert (ini.sections["S"].options, ini.sections["s"].options) == ({"a": "1"}, {"a": "2"})


def test_double_quotes_alone_mean_empty_string(tmp_path: Path) -> None:
    assert options(tmp_path, '[s]\na = ""\n') == {"a": ""}


def test_percent_is_not_interpolated(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\na = 100%(b)s\nb = x\n")["a"] == "100%(b)s"


# --- duplicates, continuation, DEFAULT -----------------------------------------


def test_first_occurrence_of_a_key_wins(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\na = 1\na = 2\n") == {"a": "1"}


def test_continuation_of_an_ignored_duplicate_is_ignored(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\na = 1\na = 2\n  3\n") == {"a": "1"}


def test_repeated_section_header_extends_the_section(tmp_path: Path) -> None:
    text = "[s]\na = 1\n[t]\nx = 0\n[s]\na = 9\nb = 2\n"
    assert options(tmp_path, text) == {"a": "1", "b": "2"}


def test_continuation_lines_are_joined_with_newlines(tmp_path: Path) -> None:
    assert options(tmp_path, "[s]\nargs = --a\n  --b\n\n\t--c\n") == {"args": "--a\n--b\n--c"}


def test_default_keys_appear_in_every_section(tmp_path: Path) -> None:
    ini = parse(tmp_path, "[DEFAULT]\nd = 1\n[s]\na = 2\n[t]\nd = 3\n")
    assert ini.sections["s"].options == {"a": "2", "d": "1"}
    assert ini.sections["t"].options == {"d": "3"}


def test_default_is_not_a_section(tmp_path: Path) -> None:
    assert "DEFAULT" not in parse(tmp_path, "[DEFAULT]\nd = 1\n[s]\na = 2\n").sections


def test_no_name_key_leaks_into_sections(tmp_path: Path) -> None:
    assert "__name__" not in options(tmp_path, "[s]\na = 1\n")


def test_empty_section_is_skipped(tmp_path: Path) -> None:
    assert list(parse(tmp_path, "[empty]\n[s]\na = 1\n").sections) == ["s"]


def test_sections_keep_file_order(tmp_path: Path) -> None:
    ini = parse(tmp_path, "[b]\nx = 1\n[a]\nx = 1\n[c]\nx = 1\n")
    assert list(ini.sections) == ["b", "a", "c"]


def test_sections_with_prefix(tmp_path: Path) -> None:
    ini = parse(tmp_path, "[socket:a]\nx = 1\n[watcher:a]\nx = 1\n[socket:b]\nx = 1\n")
    assert [s.name for s in ini.sections_with_prefix("socket:")] == ["socket:a", "socket:b"]


# --- errors ----------------------------------------------------------------------


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        read_ini_file(tmp_path / "nope.ini")
    assert raised.value.file == str(tmp_path / "nope.ini")


def test_undecodable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.ini"
    path.write_bytes(b"[s]\na = \xff\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        read_ini_file(path)


def test_option_before_any_section_is_an_error_with_line_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2"):
        parse(tmp_path, "# c\na = 1\n")


def test_line_without_delimiter_is_an_error_with_line_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 3"):
        parse(tmp_path, "[s]\na = 1\nnonsense\n")


def test_empty_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2"):
        parse(tmp_path, "[s]\n= 1\n")


def test_config_error_string_names_file_section_and_key() -> None:
    error = ConfigError("bad", file="/c.ini", section="watcher:w", key="numprocesses")
    assert str(error) == "/c.ini:watcher:w:numprocesses: bad"


def test_config_error_string_omits_unknown_parts() -> None:
    assert str(ConfigError("bad", file="/c.ini")) == "/c.ini: bad"


# --- includes ----------------------------------------------------------------------


def test_include_is_relative_to_the_main_file(tmp_path: Path) -> None:
    write(tmp_path, "conf/more.ini", "[s]\nb = 2\n")
    main = write(tmp_path, "conf/circus.ini", "[circus]\ninclude = more.ini\n[s]\na = 1\n")
    os.chdir("/")
    assert read_ini_file(main).sections["s"].options == {"a": "1", "b": "2"}


class RecordingSource:
    """An `IniSource` in memory that records what the parser asks of it."""

    def __init__(self, files: dict[str, str], globs: dict[str, list[str]]) -> None:
        self.files = files
        self.globs = globs
        self.calls: list[tuple[str, str]] = []

    def text(self, path: str) -> str:
        self.calls.append(("text", path))
        return self.files[path]

    def matches(self, pattern: str) -> list[str]:
        self.calls.append(("matches", pattern))
        return self.globs.get(pattern, [])


def test_the_parser_reads_only_through_its_source() -> None:
    source = RecordingSource(
        {
            "/etc/c/main.ini": "[circus]\ninclude = more.ini\ninclude_dir = d\n[s]\na = 1\n",
            "/etc/c/more.ini": "[s]\nb = 2\n",
            "/etc/c/d/x.ini": "[s]\nc = 3\n",
        },
        {"/etc/c/more.ini": ["/etc/c/more.ini"], "/etc/c/d/*.ini": ["/etc/c/d/x.ini"]},
    )
    ini = parse_ini("/etc/c/main.ini", source)
    assert ini.sections["s"].options == {"a": "1", "b": "2", "c": "3"}
    assert source.calls == [
        ("text", "/etc/c/main.ini"),
        ("matches", "/etc/c/more.ini"),
        ("text", "/etc/c/more.ini"),
        ("matches", "/etc/c/d/*.ini"),
        ("text", "/etc/c/d/x.ini"),
    ]


def test_main_file_wins_over_includes(tmp_path: Path) -> None:
    write(tmp_path, "more.ini", "[s]\na = 2\n")
    assert options(tmp_path, "[circus]\ninclude = more.ini\n[s]\na = 1\n") == {"a": "1"}


def test_includes_are_read_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path, "inc/b.ini", "[s]\na = b\n")
    write(tmp_path, "inc/a.ini", "[s]\na = a\n")
    ini = parse(tmp_path, "[circus]\ninclude = inc/*.ini\n")
    assert ini.sections["s"].options == {"a": "a"}
    assert ini.files[1:] == [str(tmp_path / "inc/a.ini"), str(tmp_path / "inc/b.ini")]


def test_include_dir_reads_ini_files_of_the_directory(tmp_path: Path) -> None:
    write(tmp_path, "d/x.ini", "[watcher:x]\ncmd = x\n")
    write(tmp_path, "d/x.txt", "[watcher:y]\ncmd = y\n")
    ini = parse(tmp_path, "[circus]\ninclude_dir = d\n")
    assert [s.name for s in ini.sections_with_prefix("watcher:")] == ["watcher:x"]


def test_includes_of_included_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "a.ini", "[circus]\ninclude = b.ini\n")
    write(tmp_path, "b.ini", "[s]\nb = 1\n")
    assert "s" not in parse(tmp_path, "[circus]\ninclude = a.ini\n").sections


def test_include_matching_nothing_is_a_warning(tmp_path: Path) -> None:
    ini = parse(tmp_path, "[circus]\ninclude = none/*.ini\n")
    assert len(ini.warnings) == 1 and "none/*.ini" in ini.warnings[0]


def test_files_lists_main_first(tmp_path: Path) -> None:
    write(tmp_path, "more.ini", "[s]\nb = 2\n")
    ini = parse(tmp_path, "[circus]\ninclude = more.ini\n")
    assert ini.files == [str(tmp_path / "circus.ini"), str(tmp_path / "more.ini")]


def test_file_of_names_the_included_file(tmp_path: Path) -> None:
    write(tmp_path, "more.ini", "[s]\nb = 2\n")
    section = parse(tmp_path, "[circus]\ninclude = more.ini\n[s]\na = 1\n").sections["s"]
    assert (section.file_of("a"), section.file_of("b")) == (
        str(tmp_path / "circus.ini"),
        str(tmp_path / "more.ini"),
    )


def test_syntax_error_in_an_include_names_the_included_file(tmp_path: Path) -> None:
    write(tmp_path, "more.ini", "[s]\nbroken\n")
    with pytest.raises(ConfigError) as raised:
        parse(tmp_path, "[circus]\ninclude = more.ini\n")
    assert raised.value.file == str(tmp_path / "more.ini")


# --- typed getters -------------------------------------------------------------------


def section(**values: str) -> Section:
    return Section("watcher:w", dict(values), file="/c.ini")


@pytest.mark.parametrize("word", ["yes", "TRUE", "On", "1"])
def test_get_bool_true_words(word: str) -> None:
    assert section(a=word).get_bool("a", False) is True


@pytest.mark.parametrize("word", ["no", "False", "OFF", "0"])
def test_get_bool_false_words(word: str) -> None:
    assert section(a=word).get_bool("a", True) is False


def test_get_bool_default_when_absent() -> None:
    assert section().get_bool("a", True) is True


def test_get_bool_rejects_other_words_naming_where() -> None:
    with pytest.raises(ConfigError) as raised:
        section(a="maybe").get_bool("a", False)
    assert str(raised.value).startswith("/c.ini:watcher:w:a: 'maybe'")


def test_get_int_parses_and_rejects() -> None:
    assert section(n="12").get_int("n", None) == 12
    with pytest.raises(ConfigError, match="integer"):
        section(n="1.5").get_int("n", None)


def test_get_float_parses_and_rejects() -> None:
    assert section(t="2.5").get_float("t", None) == 2.5
    with pytest.raises(ConfigError, match="number"):
        section(t="soon").get_float("t", None)


@pytest.mark.parametrize(("text", "value"), [("077", 0o77), ("0o77", 0o77), ("0", 0), ("22", 0o22)])
def test_get_octal(text: str, value: int) -> None:
    assert section(u=text).get_octal("u", None) == value


def test_get_octal_rejects_decimal_digits() -> None:
    with pytest.raises(ConfigError, match="octal"):
        section(u="089").get_octal("u", None)


# --- expansion ---------------------------------------------------------------------------


def test_expand_env_both_spellings_case_insensitive() -> None:
    env = {"HOME": "/root"}
    assert expand_env("$(circus.env.home)|((CIRCUS.ENV.Home))", env) == "/root|/root"


def test_expand_env_leaves_unknown_keys_verbatim() -> None:
    assert expand_env("$(circus.env.nope) $(circus.wid)", {}) == "$(circus.env.nope) $(circus.wid)"


def test_replace_variables_leaves_text_without_variables_alone() -> None:
    assert replace_variables("a $(b) ((c)) $WID", {"wid": 1}) == "a $(b) ((c)) $WID"


@given(st.text())
def test_expand_env_without_variables_is_identity(text: str) -> None:
    assert expand_env(text, {}) == text


def test_section_expanded_expands_every_value() -> None:
    expanded = section(a="$(circus.env.x)", b="y").expanded({"X": "1"})
    assert expanded.options == {"a": "1", "b": "y"}


def test_global_env_adds_env_section_expanded_against_environ(tmp_path: Path) -> None:
    ini = parse(tmp_path, "[env]\nA = $(circus.env.home)/a\nB = $(circus.env.a)\n")
    env = global_env(ini, {"HOME": "/h", "A": "old"})
    assert env == {"HOME": "/h", "A": "/h/a", "B": "old"}


def test_global_env_has_no_name_variable(tmp_path: Path) -> None:
    ini = parse(tmp_path, "[env]\nA = 1\n")
    assert "__name__" not in global_env(ini, {})
