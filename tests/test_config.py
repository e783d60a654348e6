"""Tests for chapiteau.supervisor.config, the supervisor's model of a Circus config."""

from __future__ import annotations

import importlib.util
import pwd
import resource
import shlex
import signal
import sys
from pathlib import Path

import pytest

from chapiteau.protocol.ini import ConfigError
from chapiteau.supervisor.config import (
    DEFAULT_PATH,
    CircusOptions,
    Config,
    Flapping,
    WatcherConfig,
    load_config,
    worker_env,
)

FIXTURES = Path(__file__).parent / "config"
ENVIRON = {"HOME": "/home/test", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def load(name: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(FIXTURES / name, ENVIRON if environ is None else environ)


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "circus.ini"
    path.write_text(text, encoding="utf-8")
    return load_config(path, ENVIRON if environ is None else environ)


def watcher(tmp_path: Path, options: str, environ: dict[str, str] | None = None) -> WatcherConfig:
    config = load_text(tmp_path, f"[watcher:w]\ncmd = run\n{options}\n", environ)
    return config.watchers[0]


def error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as raised:
        load_text(tmp_path, text)
    return raised.value


# --- [circus] ------------------------------------------------------------------------


def test_circus_defaults_when_section_is_absent() -> None:
    circus = load("minimal.ini").circus
    assert circus == CircusOptions()
    assert (circus.endpoint, circus.check_delay, circus.multicast_endpoint) == (
        "tcp://127.0.0.1:5555",
        5.0,
        None,
    )


def test_circus_options_are_parsed() -> None:
    circus = load("full.ini").circus
    assert circus.endpoint == "ipc:///run/chapiteau/control.sock"
    assert circus.endpoint_owner == "nobody"
    assert circus.check_delay == 2.5
    assert circus.umask == 0o027
    assert circus.debug is True
    assert circus.loglevel == "debug"
    assert circus.multicast_endpoint == "udp://237.219.251.97:12027"


def test_stats_endpoint_turns_statsd_on_with_a_warning(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[circus]\nstats_endpoint = tcp://127.0.0.1:7000\n")
    assert config.circus.statsd is True
    assert any("stats_endpoint" in warning for warning in config.warnings)


def test_unicast_multicast_endpoint_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[circus]\nmulticast_endpoint = udp://10.0.0.1:9\n").key == (
        "multicast_endpoint"
    )


def test_empty_multicast_endpoint_disables_discovery(tmp_path: Path) -> None:
    assert (
        load_text(tmp_path, '[circus]\nmulticast_endpoint = ""\n').circus.multicast_endpoint is None
    )


def test_circus_values_expand_env(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[circus]\npidfile = $(circus.env.home)/c.pid\n")
    assert config.circus.pidfile == "/home/test/c.pid"


def test_unknown_loglevel_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[circus]\nloglevel = loud\n").key == "loglevel"


@pytest.mark.parametrize(
    ("value", "endpoint"),
    [("127.0.0.1:9090", ("127.0.0.1", 9090)), ("[::1]:9100", ("::1", 9100)), ("", None)],
)
def test_metrics_endpoint_is_host_and_port(
    tmp_path: Path, value: str, endpoint: tuple[str, int] | None
) -> None:
    config = load_text(tmp_path, f"[circus]\nmetrics_endpoint = {value}\n")
    assert config.circus.metrics_endpoint == endpoint


@pytest.mark.parametrize("value", ["9090", "localhost:", ":9090", "host:port", "h:70000"])
def test_a_metrics_endpoint_that_is_no_host_and_port_is_refused(tmp_path: Path, value: str) -> None:
    refused = error(tmp_path, f"[circus]\nmetrics_endpoint = {value}\n")
    assert (refused.section, refused.key) == ("circus", "metrics_endpoint")
    assert "write e.g. 127.0.0.1:9090" in str(refused)


def test_metrics_without_the_prometheus_client_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    refused = error(tmp_path, "[circus]\nmetrics_endpoint = 127.0.0.1:9090\n")
    assert refused.key == "metrics_endpoint"
    assert "pip install 'chapiteau[metrics]'" in str(refused)
    assert "\n" not in str(refused)


# --- watcher options -------------------------------------------------------------------


def test_watcher_defaults_are_circus_defaults() -> None:
    worker = load("minimal.ini").watchers[0]
    assert worker == WatcherConfig(
        name="worker",
        cmd="/usr/bin/sleep 60",
        options={"cmd": "/usr/bin/sleep 60"},
    )
    assert (worker.numprocesses, worker.graceful_timeout, worker.stop_signal) == (1, 30.0, 15)
    assert (worker.max_retry, worker.close_child_stdin, worker.respawn) == (5, True, True)


def test_every_watcher_option_is_parsed() -> None:
    web = load("full.ini").watcher("web")
    assert web is not None
    assert web.cmd == "chaussette --fd $(circus.sockets.web) --backlog ((circus.numprocesses))"
    assert web.args == "--worker $(circus.wid)\n--name shop"
    assert web.executable == "/usr/bin/python3"
    assert web.working_dir == "/srv/web"
    assert (web.uid, web.gid) == (65534, 65534)
    assert (web.numprocesses, web.warmup_delay, web.singleton) == (4, 2.0, False)
    assert (web.send_hup, web.stop_signal, web.stop_children) == (True, signal.SIGQUIT, True)
    assert (web.graceful_timeout, web.max_retry, web.priority) == (12.5, -1, 10)
    assert (web.use_sockets, web.copy_env, web.copy_path) == (True, False, False)
    assert (web.respawn, web.autostart, web.on_demand) == (False, False, True)
    assert (web.close_child_stdin, web.close_child_stdout, web.close_child_stderr) == (
        False,
        True,
        True,
    )
    assert web.rlimits == {"nofile": 4096, "core": resource.RLIM_INFINITY}
    assert web.hooks == {
        "before_start": ("myapp.hooks.check", False),
        "after_spawn": ("myapp.hooks.notify", True),
    }
    assert web.stdout_stream == {
        "class": "FileStream",
        "filename": "/var/log/web.log",
        "max_bytes": "1048576",
    }
    assert web.stderr_stream == {"class": "StdoutStream"}
    assert (web.max_age, web.max_age_variance) == (3600, 60)
    assert web.stdin_socket == "admin"
    assert web.sockets == ("web", "admin")
    assert web.socket_protocol == "systemd"
    assert web.umask == 0o002
    assert web.options["flapping.max_retry"] == "3"


def test_watchers_are_sorted_by_name(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, "[watcher:b]\ncmd = b\n[watcher:a]\ncmd = a\n[watcher:C]\ncmd = c\n"
    )
    assert [w.name for w in config.watchers] == ["C", "a", "b"]


def test_watcher_lookup_ignores_case() -> None:
    assert load("minimal.ini").watcher("WORKER") is not None


def test_watcher_name_keeps_its_case(tmp_path: Path) -> None:
    assert load_text(tmp_path, "[watcher:Web]\ncmd = x\n").watchers[0].name == "Web"


def test_names_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    raised = error(tmp_path, "[watcher:web]\ncmd = a\n[watcher:Web]\ncmd = b\n")
    assert raised.section == "watcher:Web"


def test_watcher_without_cmd_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\nnumprocesses = 2\n").key == "cmd"


def test_bad_bool_names_file_section_key_and_value(tmp_path: Path) -> None:
    raised = error(tmp_path, "[watcher:w]\ncmd = x\nrespawn = sometimes\n")
    assert str(raised) == f"{tmp_path / 'circus.ini'}:watcher:w:respawn: 'sometimes' is not a " + (
        "boolean; use true or false"
    )


def test_bad_int_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\ncmd = x\nnumprocesses = many\n").key == "numprocesses"


def test_negative_numprocesses_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\ncmd = x\nnumprocesses = -1\n").key == "numprocesses"


def test_singleton_with_several_processes_is_refused(tmp_path: Path) -> None:
    raised = error(tmp_path, "[watcher:w]\ncmd = x\nsingleton = true\nnumprocesses = 2\n")
    assert raised.key == "numprocesses"


def test_zero_processes_is_a_warning(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[watcher:w]\ncmd = x\nnumprocesses = 0\n")
    assert config.watchers[0].numprocesses == 0 and len(config.warnings) == 1


def test_copy_path_without_copy_env_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\ncmd = x\ncopy_path = true\n").key == "copy_path"


def test_virtualenv_without_copy_env_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\ncmd = x\nvirtualenv = /venv\n").key == "virtualenv"


@pytest.mark.parametrize("value", ["TERM", "sigterm", "15"])
def test_stop_signal_spellings(tmp_path: Path, value: str) -> None:
    assert watcher(tmp_path, f"stop_signal = {value}").stop_signal == signal.SIGTERM


def test_unknown_signal_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\ncmd = x\nstop_signal = SIGNOPE\n").key == "stop_signal"


def test_unknown_socket_protocol_is_refused(tmp_path: Path) -> None:
    raised = error(tmp_path, "[watcher:w]\ncmd = x\nsocket_protocol = inetd\n")
    assert raised.key == "socket_protocol"


def test_unknown_hook_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\ncmd = x\nhooks.before_lunch = a.b\n").key == (
        "hooks.before_lunch"
    )


def test_bad_hook_flag_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\ncmd = x\nhooks.after_start = a.b, perhaps\n").key == (
        "hooks.after_start"
    )


def test_unknown_rlimit_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\ncmd = x\nrlimit_coffee = 3\n").key == "rlimit_coffee"


def test_unknown_short_stream_class_is_refused(tmp_path: Path) -> None:
    raised = error(tmp_path, "[watcher:w]\ncmd = x\nstdout_stream.class = Nope\n")
    assert raised.key == "stdout_stream.class"


def test_dotted_stream_class_is_accepted(tmp_path: Path) -> None:
    stream = watcher(tmp_path, "stdout_stream.class = my.Stream").stdout_stream
    assert stream == {"class": "my.Stream"}


def test_env_option_in_watcher_is_ignored_with_a_warning(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[watcher:w]\ncmd = x\nenv = A=1\n")
    assert "A" not in config.watchers[0].env and "env:w" in config.warnings[0]


def test_free_form_options_are_kept(tmp_path: Path) -> None:
    assert watcher(tmp_path, "flapping.window = 10").options["flapping.window"] == "10"


def test_spawn_time_variables_survive_loading(tmp_path: Path) -> None:
    assert watcher(tmp_path, "args = $(circus.wid) ((circus.nope))").args == (
        "$(circus.wid) ((circus.nope))"
    )


def test_umask_is_octal(tmp_path: Path) -> None:
    assert watcher(tmp_path, "umask = 22").umask == 0o22


def test_error_in_an_included_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "more.ini").write_text("[watcher:x]\ncmd = x\nnumprocesses = lots\n")
    raised = error(tmp_path, "[circus]\ninclude = more.ini\n")
    assert raised.file == str(tmp_path / "more.ini")


def test_main_file_wins_over_included_files() -> None:
    config = load("include.ini")
    main = config.watcher("main")
    extra = config.watcher("extra")
    assert main is not None and extra is not None
    assert (main.numprocesses, main.priority, extra.cmd) == (2, 3, "extra")
    assert [s.name for s in config.sockets] == ["extra"]
    assert len(config.files) == 3


# --- uid / gid -----------------------------------------------------------------------------


def test_uid_root_is_honoured(tmp_path: Path) -> None:
    root = watcher(tmp_path, "uid = root")
    assert (root.uid, root.gid) == (0, 0)


def test_uid_zero_is_honoured(tmp_path: Path) -> None:
    assert watcher(tmp_path, "uid = 0").uid == 0


def test_gid_defaults_to_the_users_primary_group(tmp_path: Path) -> None:
    assert watcher(tmp_path, "uid = nobody").gid == pwd.getpwnam("nobody").pw_gid


def test_gid_without_uid(tmp_path: Path) -> None:
    configured = watcher(tmp_path, "gid = 0")
    assert (configured.uid, configured.gid) == (None, 0)


def test_unknown_user_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\ncmd = x\nuid = no-such-user-here\n").key == "uid"


def test_unknown_group_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\ncmd = x\ngid = no-such-group-here\n").key == "gid"


# --- sockets ------------------------------------------------------------------------------


def test_socket_names_are_lower_cased_with_raw_options() -> None:
    sockets = load("full.ini").sockets
    assert [(s.name, s.options) for s in sockets] == [
        ("web", {"host": "127.0.0.1", "port": "8000"}),
        ("admin", {"path": "/run/admin.sock"}),
    ]


def test_socket_options_expand_env(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[socket:s]\npath = $(circus.env.home)/s.sock\n")
    assert config.sockets[0].options == {"path": "/home/test/s.sock"}


def test_socket_names_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[socket:a]\nport = 1\n[socket:A]\nport = 2\n").section == "socket:A"


def test_watcher_sockets_come_from_option_references_and_stdin(tmp_path: Path) -> None:
    text = (
        "[socket:a]\nport = 1\n[socket:b]\nport = 2\n[socket:c]\nport = 3\n"
        "[watcher:w]\ncmd = run ((circus.sockets.B))\nargs = $(circus.sockets.a)\n"
        "sockets = c, a\nstdin_socket = b\n"
    )
    assert load_text(tmp_path, text).watchers[0].sockets == ("c", "a", "b")


def test_reference_to_a_missing_socket_is_refused(tmp_path: Path) -> None:
    raised = error(tmp_path, "[watcher:w]\ncmd = run $(circus.sockets.web)\n")
    assert (raised.key, "[socket:web]" in raised.message) == ("cmd", True)


def test_declared_missing_socket_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\ncmd = run\nsockets = web\n").key == "sockets"


def test_missing_stdin_socket_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[watcher:w]\ncmd = run\nstdin_socket = web\n").key == "stdin_socket"


# --- environment --------------------------------------------------------------------------


def test_env_section_reaches_every_watcher() -> None:
    batch = load("env.ini").watcher("batch")
    assert batch is not None and batch.env["GREETING"] == "hello"


def test_env_values_expand_circus_env_from_environ() -> None:
    batch = load("env.ini").watcher("batch")
    assert batch is not None and batch.env["HOME_COPY"] == "/home/test"


def test_env_keys_keep_their_case() -> None:
    batch = load("env.ini").watcher("batch")
    assert batch is not None and batch.env["Mixed_Case"] == "kept"


def test_dollar_var_in_env_sections_expands_from_environ() -> None:
    batch = load("env.ini").watcher("batch")
    assert batch is not None and batch.env["PATH"] == "/usr/bin:/bin:/opt/bin"


def test_env_pattern_sections_apply_in_file_order() -> None:
    config = load("env.ini")
    web1, web2, api = config.watcher("web-1"), config.watcher("web-2"), config.watcher("api")
    assert web1 is not None and web2 is not None and api is not None
    assert (web1.env["TIER"], web2.env["TIER"], api.env["TIER"]) == ("front", "second", "front")
    assert "TIER" not in (config.watcher("batch") or web1).env


def test_watcher_options_see_env_pattern_sections_first() -> None:
    config = load("env.ini")
    web1, web2 = config.watcher("web-1"), config.watcher("web-2")
    assert web1 is not None and web2 is not None
    assert (web1.cmd, web2.cmd) == ("run front hello", "run second bonjour")


def test_copy_env_starts_from_the_supervisor_environment() -> None:
    api = load("env.ini").watcher("api")
    assert api is not None and api.env["LANG"] == "C.UTF-8" and api.env["GREETING"] == "hello"


def test_inherited_values_are_not_dollar_expanded(tmp_path: Path) -> None:
    environ = {"TEST_VAR": "foo$BAR", "BAR": "x"}
    assert watcher(tmp_path, "copy_env = true", environ).env["TEST_VAR"] == "foo$BAR"


def test_copy_env_leaves_systemd_s_per_process_variables_out(tmp_path: Path) -> None:
    own = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
    environ = {name: "1" for name in own} | {"KEPT": "x"}
    env = watcher(tmp_path, "copy_env = true", environ).env
    assert env["KEPT"] == "x" and not set(env) & set(own)


def test_no_name_variable_in_any_environment() -> None:
    config = load("env.ini")
    assert all("__name__" not in w.env for w in config.watchers)
    assert "__name__" not in config.env


def test_child_without_configured_env_gets_a_default_path(tmp_path: Path) -> None:
    env = watcher(tmp_path, "").env
    assert env == {}  # as Circus computes it, which `options` shows
    assert worker_env(env) == {"PATH": DEFAULT_PATH}
    assert worker_env({"PATH": "/bin"}) == {"PATH": "/bin"}


def test_copy_env_keeps_the_inherited_path(tmp_path: Path) -> None:
    assert watcher(tmp_path, "copy_env = true").env["PATH"] == "/usr/bin:/bin"


def test_copy_path_sets_pythonpath_to_sys_path(tmp_path: Path) -> None:
    env = watcher(tmp_path, "copy_env = true\ncopy_path = true").env
    assert env["PYTHONPATH"].split(":") == sys.path


def test_virtualenv_prepends_bin_and_site_packages(tmp_path: Path) -> None:
    site = tmp_path / "venv/lib/python3.11/site-packages"
    (site / "extra").mkdir(parents=True)
    (site / "extra.pth").write_text("# comment\nextra\nimport os\nmissing\n")
    env = watcher(
        tmp_path,
        f"copy_env = true\nvirtualenv = {tmp_path / 'venv'}\nvirtualenv_py_ver = 3.11",
    ).env
    assert env["PYTHONPATH"].split(":") == [str(site / "extra"), str(site)]
    assert env["PATH"] == f"{tmp_path / 'venv/bin'}:/usr/bin:/bin"


def test_virtualenv_without_site_packages_is_refused(tmp_path: Path) -> None:
    raised = error(tmp_path, f"[watcher:w]\ncmd = x\ncopy_env = 1\nvirtualenv = {tmp_path}\n")
    assert raised.key == "virtualenv"


# --- plugins ------------------------------------------------------------------------------


def test_plugin_gets_circus_plugin_defaults() -> None:
    plugin = load("plugin.ini").plugins[0]
    assert (plugin.name, plugin.use) == ("plugin:flapping", "circus.plugins.flapping.Flapping")
    assert plugin.config == {
        "use": "circus.plugins.flapping.Flapping",
        "retry_in": "3",
        "max_retry": "2",
    }
    assert (plugin.watcher.priority, plugin.watcher.singleton) == (1, True)
    assert (plugin.watcher.copy_env, plugin.watcher.copy_path) == (True, True)
    assert plugin.watcher.close_child_stdout is True


def test_plugin_without_use_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "[plugin:p]\nretry_in = 3\n").key == "use"


def test_debug_keeps_plugin_outputs_open(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, "[circus]\ndebug = true\n[plugin:p]\nuse = circus.plugins.flapping.Flapping\n"
    )
    assert config.plugins[0].watcher.close_child_stderr is False


def test_flapping_plugin_runs_no_process() -> None:
    assert [w.name for w in load("plugin.ini").watchers if w.name.startswith("plugin:")] == []


def test_flapping_plugin_tunes_the_crash_loop_policy() -> None:
    assert load("plugin.ini").flapping == Flapping(window=1.0, max_retry=2)
    assert load("minimal.ini").flapping == Flapping()


def test_flapping_window_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    raised = error(
        tmp_path, "[plugin:flapping]\nuse = circus.plugins.flapping.Flapping\nwindow = soon\n"
    )
    assert (raised.section, raised.key) == ("plugin:flapping", "window")
    assert str(raised).startswith(f"{tmp_path / 'circus.ini'}:plugin:flapping:window: ")


@pytest.fixture
def circus_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ``circus`` package on sys.path (the real one is not a test dependency)."""
    (tmp_path / "circus").mkdir()
    (tmp_path / "circus/__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.usefixtures("circus_package")
def test_plugin_runs_as_a_watcher_with_circusd_command_line(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "[circus]\nendpoint = ipc:///run/c.sock\npubsub_endpoint = ipc:///run/p.sock\n"
        "check_delay = 2\n[plugin:watchdog]\nuse = circus.plugins.watchdog.WatchDog\n"
        "loop_rate = 60\nmsg_regex = a b\n",
    )
    (plugin,) = [w for w in config.watchers if w.name == "plugin:watchdog"]
    argv = shlex.split(plugin.cmd)
    assert argv[:3] == [sys.executable, "-c", "from circus import plugins;plugins.main()"]
    assert argv[argv.index("--endpoint") + 1] == "ipc:///run/c.sock"
    assert argv[argv.index("--pubsub") + 1] == "ipc:///run/p.sock"
    assert argv[argv.index("--check-delay") + 1] == "2.0"
    assert argv[argv.index("--config") + 1] == "loop_rate:60:::msg_regex:a b"
    assert argv[-1] == "circus.plugins.watchdog.WatchDog"
    assert (plugin.singleton, plugin.priority, plugin.copy_path) == (True, 1, True)


@pytest.mark.usefixtures("circus_package")
def test_plugin_section_and_its_watcher_share_one_config(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[plugin:watchdog]\nuse = circus.plugins.watchdog.WatchDog\n")
    assert config.plugins[0].watcher is config.watcher("plugin:watchdog")


def test_plugin_without_the_circus_package_is_refused(tmp_path: Path) -> None:
    if importlib.util.find_spec("circus") is not None:
        pytest.skip("the circus package is installed here")
    raised = error(tmp_path, "[plugin:w]\nuse = circus.plugins.watchdog.WatchDog\n")
    assert (raised.section, raised.key) == ("plugin:w", "use")
    assert "pip install circus" in raised.message


def test_a_misspelt_watcher_key_is_kept_with_a_warning_naming_the_closest_key(
    tmp_path: Path,
) -> None:
    config = load_text(tmp_path, "[watcher:web]\ncmd = run\nnumprocesess = 2\n")
    assert config.watchers[0].options["numprocesess"] == "2"
    assert config.watchers[0].numprocesses == 1
    assert config.warnings == (
        f"{tmp_path / 'circus.ini'}:watcher:web:numprocesess: unknown key, kept as a "
        "free-form option for plugins, as in Circus; did you mean 'numprocesses'?",
    )


def test_a_misspelt_circus_key_is_warned_about(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[circus]\nendpont = tcp://127.0.0.1:1\n")
    assert config.warnings == (
        f"{tmp_path / 'circus.ini'}:circus:endpont: unknown key, ignored; did you mean 'endpoint'?",
    )


def test_every_option_and_plugin_key_passes_without_warning(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "[circus]\nendpoint_curve_clients = /x\nstatsd_close_outputs = 1\n"
        "[watcher:web]\ncmd = run\ncheck_flapping = true\nflapping.max_retry = 2\n"
        "rlimit_nofile = 10\nhooks.before_start = a.b\nstdout_stream.class = StdoutStream\n"
        "socket_protocol = circus\nmax_age = 5\nretry_in = 1\n",
    )
    assert config.warnings == ()


def test_systemd_protocol_without_a_socket_is_an_error(tmp_path: Path) -> None:
    raised = error(tmp_path, "[watcher:web]\ncmd = gunicorn app\nsocket_protocol = systemd\n")
    assert (raised.section, raised.key) == ("watcher:web", "socket_protocol")
    assert raised.file == str(tmp_path / "circus.ini")
    assert "declares none" in str(raised) and "sockets = NAME" in str(raised)


def test_systemd_protocol_with_use_sockets_takes_every_socket(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "[socket:web]\nport = 1\n[watcher:web]\ncmd = run\nuse_sockets = true\n"
        "socket_protocol = systemd\n",
    )
    assert config.watchers[0].socket_protocol == "systemd"
