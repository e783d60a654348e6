"""Tests for broker/config.py: [broker] and [socket:*], errors named by file:section:key."""

from __future__ import annotations

import grp
import pwd
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chapiteau.broker.config import (
    DEFAULT_UNIX_UMASK,
    BrokerConfig,
    SocketSpec,
    load_broker_config,
    parse_socket,
)
from chapiteau.protocol.broker_messages import MAX_SOCKETS
from chapiteau.protocol.ini import ConfigError, Section
from chapiteau.protocol.records import replace


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> BrokerConfig:
    path = tmp_path / "circus.ini"
    path.write_text(text)
    return load_broker_config(str(path), environ or {})


def one_socket(tmp_path: Path, options: str, environ: dict[str, str] | None = None) -> SocketSpec:
    config = load(tmp_path, f"[socket:web]\n{options}\n", environ)
    return config.sockets["web"]


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return str(caught.value)


def test_socket_defaults_are_circus_defaults_with_a_private_umask(tmp_path):
    spec = one_socket(tmp_path, "host = 127.0.0.1")
    assert (spec.family, spec.type, spec.proto) == (socket.AF_INET, socket.SOCK_STREAM, 0)
    assert (spec.port, spec.backlog, spec.umask) == (8080, 2048, 0o077)
    assert not (spec.replace or spec.blocking or spec.so_reuseport)
    assert spec.interface is None and spec.path is None


def test_every_socket_option_is_parsed(tmp_path):
    spec = one_socket(
        tmp_path,
        "host = ::1\nport = 8000\nfamily = af_inet6\ntype = SOCK_DGRAM\nproto = udp\n"
        "backlog = 5\nreplace = true\nblocking = yes\ninterface = lo\nso_reuseport = on",
    )
    assert (spec.host, spec.port, spec.family) == ("::1", 8000, socket.AF_INET6)
    assert (spec.type, spec.proto, spec.backlog) == (socket.SOCK_DGRAM, 17, 5)
    assert spec.replace and spec.blocking and spec.so_reuseport
    assert spec.interface == "lo"


def test_socket_name_is_lower_cased(tmp_path):
    config = load(tmp_path, "[socket:Web]\nport = 1\n")
    assert list(config.sockets) == ["web"]


@pytest.mark.parametrize("value", ["65536", "-1", "http"])
def test_bad_port_names_file_section_and_key(tmp_path, value):
    message = error_of(tmp_path, f"[socket:web]\nport = {value}\n")
    assert message.startswith(f"{tmp_path / 'circus.ini'}:socket:web:port: ")


def test_bad_family_lists_the_families(tmp_path):
    message = error_of(tmp_path, "[socket:web]\nfamily = AF_PACKET\n")
    assert ":socket:web:family: 'AF_PACKET' is not one of AF_INET, AF_INET6, AF_UNIX" in message


def test_bad_type_names_the_key(tmp_path):
    assert ":socket:web:type: 'SOCK_FOO'" in error_of(tmp_path, "[socket:web]\ntype = SOCK_FOO\n")


def test_unknown_protocol_names_the_key(tmp_path):
    message = error_of(tmp_path, "[socket:web]\nproto = nosuchproto\n")
    assert ":socket:web:proto: unknown protocol 'nosuchproto'" in message


def test_negative_backlog_is_refused(tmp_path):
    assert ":socket:web:backlog: " in error_of(tmp_path, "[socket:web]\nbacklog = -1\n")


def test_path_forces_a_unix_socket(tmp_path):
    spec = one_socket(tmp_path, "family = AF_INET\npath = /run/x.sock")
    assert spec.family == socket.AF_UNIX and spec.path == "/run/x.sock"


def test_relative_path_is_resolved_against_the_config_directory(tmp_path):
    assert one_socket(tmp_path, "path = run/web.sock").path == str(tmp_path / "run" / "web.sock")


def test_unix_family_without_path_is_refused(tmp_path):
    assert ":socket:web:path: a unix socket needs a path" in error_of(
        tmp_path, "[socket:web]\nfamily = AF_UNIX\n"
    )


def test_umask_default_is_077(tmp_path):
    assert one_socket(tmp_path, "path = /run/x.sock").umask == DEFAULT_UNIX_UMASK == 0o077


@pytest.mark.parametrize(("text", "umask"), [("077", 0o77), ("022", 0o22), ("000", 0), ("0o7", 7)])
def test_umask_is_octal_not_decimal(tmp_path, text, umask):
    assert one_socket(tmp_path, f"path = /run/x.sock\numask = {text}").umask == umask


@pytest.mark.parametrize("value", ["8a", "1000", "abc", ""])
def test_bad_umask_names_the_key(tmp_path, value):
    assert ":socket:web:umask: " in error_of(
        tmp_path, f"[socket:web]\npath = /x\numask = {value}\n"
    )


@given(st.integers(min_value=0, max_value=0o777))
def test_every_octal_umask_round_trips(umask):
    section = Section("socket:s", {"path": "/x", "umask": f"{umask:03o}"}, {}, "/c.ini")
    assert parse_socket(section).umask == umask


def test_owner_group_and_mode_of_a_unix_socket_are_resolved(tmp_path):
    spec = one_socket(tmp_path, "path = a.sock\nowner = nobody\ngroup = 0\nmode = 0660")
    assert (spec.owner, spec.group) == (pwd.getpwnam("nobody").pw_uid, 0)
    assert spec.mode == spec.file_mode == 0o660 and spec.owned


def test_a_group_name_is_resolved(tmp_path):
    group = grp.getgrgid(0).gr_name
    assert one_socket(tmp_path, f"path = a.sock\ngroup = {group}").group == 0


def test_without_mode_the_file_mode_is_what_the_umask_leaves(tmp_path):
    spec = one_socket(tmp_path, "path = a.sock\numask = 027")
    assert (spec.mode, spec.file_mode, spec.owned) == (None, 0o750, False)


@pytest.mark.parametrize("key", ["owner", "group"])
def test_an_unknown_owner_or_group_names_file_section_and_key(tmp_path, key):
    message = error_of(tmp_path, f"[socket:web]\npath = a.sock\n{key} = no-such-name\n")
    assert message.startswith(f"{tmp_path}/circus.ini:socket:web:{key}: 'no-such-name' ")
    assert "does not exist" in message and "\n" not in message


def test_an_id_out_of_range_is_refused(tmp_path):
    message = error_of(tmp_path, "[socket:web]\npath = a.sock\nowner = 4294967295\n")
    assert ":socket:web:owner: 4294967295 is not an id" in message


@pytest.mark.parametrize("value", ["1000", "rw", "-1"])
def test_bad_mode_names_the_key(tmp_path, value):
    assert ":socket:web:mode:" in error_of(tmp_path, f"[socket:web]\npath = a\nmode = {value}\n")


def test_mode_and_umask_together_are_refused(tmp_path):
    message = error_of(tmp_path, "[socket:web]\npath = a.sock\nmode = 0660\numask = 007\n")
    assert ":socket:web:mode: give mode or umask, not both" in message


@pytest.mark.parametrize("option", ["owner = 0", "group = 0", "mode = 0600"])
def test_socket_file_options_on_an_inet_socket_are_refused(tmp_path, option):
    message = error_of(tmp_path, f"[socket:web]\nhost = 127.0.0.1\n{option}\n")
    assert "only applies to a unix socket" in message


def test_bad_boolean_names_the_key(tmp_path):
    assert ":socket:web:replace: 'maybe' is not a boolean" in error_of(
        tmp_path, "[socket:web]\nreplace = maybe\n"
    )


def test_so_reuseport_on_a_unix_socket_is_refused(tmp_path):
    message = error_of(tmp_path, "[socket:web]\npath = /x\nso_reuseport = true\n")
    assert ":socket:web:so_reuseport: " in message


def test_duplicate_socket_names_differing_in_case_are_refused(tmp_path):
    message = error_of(tmp_path, "[socket:web]\nport = 1\n[socket:WEB]\nport = 2\n")
    assert "'web' is defined twice" in message


def test_more_sockets_than_one_socket_list_holds_are_refused(tmp_path):
    text = "".join(f"[socket:s{n}]\nport = {n}\n" for n in range(MAX_SOCKETS + 1))
    message = error_of(tmp_path, text)
    assert f":socket:s{MAX_SOCKETS}: too many [socket:*] sections" in message


def test_bad_socket_name_is_refused(tmp_path):
    assert "socket name 'a b'" in error_of(tmp_path, "[socket:a b]\nport = 1\n")


def test_unknown_socket_key_is_refused(tmp_path):
    message = error_of(tmp_path, "[socket:web]\nso_reusport = true\n")
    assert ":socket:web:so_reusport: unknown option" in message


def test_values_expand_circus_env_from_the_environment_and_env_section(tmp_path):
    config = load(
        tmp_path,
        "[env]\nPORT = 81$(circus.env.SUFFIX)\n"
        "[socket:web]\nhost = $(circus.env.HOST)\nport = $(circus.env.PORT)\n",
        {"HOST": "127.0.0.2", "SUFFIX": "23"},
    )
    assert (config.sockets["web"].host, config.sockets["web"].port) == ("127.0.0.2", 8123)


def test_broker_section_is_parsed(tmp_path):
    config = load(
        tmp_path,
        "[broker]\nuser = www\ngroup = web\nsupervisor_command = /bin/sv --x 'a b'\n"
        "socket_path = /run/c/broker.sock\norphan_timeout = 2.5\n",
    )
    assert (config.user, config.group) == ("www", "web")
    assert config.supervisor_command == ("/bin/sv", "--x", "a b")
    assert config.socket_path == "/run/c/broker.sock"
    assert config.orphan_timeout == 2.5


def test_broker_defaults_without_a_broker_section(tmp_path):
    config = load(tmp_path, "[circus]\ncheck_delay = 1\n")
    assert config.user is None and config.group is None and config.socket_path is None
    assert config.supervisor_command is None and config.orphan_timeout == 30.0
    assert config.files == (str(tmp_path / "circus.ini"),)


def test_unknown_broker_key_is_refused_with_the_accepted_keys(tmp_path):
    message = error_of(tmp_path, "[broker]\nusr = nobody\n")
    assert message.startswith(f"{tmp_path / 'circus.ini'}:broker:usr: unknown option")
    assert (
        "runtime_directory, runtime_directory_mode, socket_path, supervisor_command, supervisor_env"
        in message
    )


def test_default_section_keys_are_tolerated_in_broker_and_socket_sections(tmp_path):
    config = load(tmp_path, "[DEFAULT]\nbase = /srv\n[broker]\nuser = x\n[socket:web]\nport = 1\n")
    assert config.user == "x" and config.sockets["web"].port == 1


def test_relative_socket_path_of_the_broker_is_refused(tmp_path):
    assert ":broker:socket_path: " in error_of(tmp_path, "[broker]\nsocket_path = run/b.sock\n")


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_bad_orphan_timeout_is_refused(tmp_path, value):
    assert ":broker:orphan_timeout: " in error_of(tmp_path, f"[broker]\norphan_timeout = {value}\n")


def test_orphan_timeout_zero_is_allowed(tmp_path):
    assert load(tmp_path, "[broker]\norphan_timeout = 0\n").orphan_timeout == 0.0


def test_runtime_directory_and_its_mode_are_parsed(tmp_path):
    config = load(
        tmp_path, "[broker]\nruntime_directory = /run/circus\nruntime_directory_mode = 755\n"
    )
    assert (config.runtime_directory, config.runtime_directory_mode) == ("/run/circus", 0o755)
    assert load(tmp_path, "[broker]\n").runtime_directory is None


def test_runtime_directory_mode_defaults_to_0750(tmp_path):
    config = load(tmp_path, "[broker]\nruntime_directory = /run/circus\n")
    assert config.runtime_directory_mode == 0o750


@pytest.mark.parametrize("value", ["run/circus", "/", "//"])
def test_runtime_directory_must_be_absolute_and_below_root(tmp_path, value):
    message = error_of(tmp_path, f"[broker]\nruntime_directory = {value}\n")
    assert ":broker:runtime_directory: " in message and "absolute path below /" in message


@pytest.mark.parametrize("value", ["999", "1777", "rwx"])
def test_bad_runtime_directory_mode_is_refused(tmp_path, value):
    message = error_of(tmp_path, f"[broker]\nruntime_directory_mode = {value}\n")
    assert ":broker:runtime_directory_mode: " in message


def test_supervisor_env_is_a_list_of_names_and_prefixes(tmp_path):
    config = load(tmp_path, "[broker]\nsupervisor_env = DJANGO_SETTINGS_MODULE\n  APP_*\n")
    assert config.supervisor_env == ("DJANGO_SETTINGS_MODULE", "APP_*")
    assert load(tmp_path, "[broker]\n").supervisor_env == ()


@pytest.mark.parametrize("word", ["A=B", "*", "1ABC", "A*B"])
def test_supervisor_env_refuses_what_is_not_a_name_or_prefix(tmp_path, word):
    message = error_of(tmp_path, f"[broker]\nsupervisor_env = PATH {word}\n")
    assert f":broker:supervisor_env: {word!r} is not a variable name" in message


def test_unsplittable_supervisor_command_is_refused(tmp_path):
    message = error_of(tmp_path, "[broker]\nsupervisor_command = /bin/x 'open\n")
    assert ":broker:supervisor_command: cannot split" in message


def test_missing_config_is_a_config_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_broker_config(str(tmp_path / "missing.ini"), {})


def test_same_binding_ignores_where_only(tmp_path):
    first = one_socket(tmp_path, "port = 1")
    second = replace(first, where="other")
    third = replace(first, backlog=3)
    assert first.same_binding(second) and not first.same_binding(third)


def test_circus_logging_keys_are_read_for_the_command_line_defaults(tmp_path):
    config = load(
        tmp_path,
        "[circus]\nloglevel = WARNING\nlogoutput = /var/log/c.log\npidfile = /run/c.pid\n",
    )
    assert (config.loglevel, config.logoutput, config.pidfile) == (
        "warning",
        "/var/log/c.log",
        "/run/c.pid",
    )


def test_circus_logoutput_dash_means_stderr(tmp_path):
    assert load(tmp_path, "[circus]\nlogoutput = -\n").logoutput is None


def test_syslog_logoutput_is_refused_with_its_key(tmp_path):
    assert "circus:logoutput: syslog output is not supported" in error_of(
        tmp_path, "[circus]\nlogoutput = syslog:///dev/log?local0\n"
    )


def test_bad_circus_loglevel_names_its_key(tmp_path):
    assert "circus:loglevel:" in error_of(tmp_path, "[circus]\nloglevel = loud\n")
