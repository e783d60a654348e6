"""The broker's event loop: serve the supervisor, keep it alive, stop in order.

Read ``Broker.run`` top to bottom: wait for a wake-up (a signal, a request, a
timer), act, repeat. It sleeps in select() with no timeout when there is
nothing to do, so an idle broker costs nothing.

What happens when the supervisor dies: the broker is a child subreaper, so the
supervisor's workers become the broker's children, and they keep serving. A
new supervisor starts at once (after a capped exponential backoff only when
it crash-loops, and with no delay at all after a ``handover``, an upgrade),
receives the very same listening sockets, which the kernel kept queueing
meanwhile, and the pipes and memfds the broker held for it (`HeldFds`), with
which it adopts the workers. Orphans get their stop signal (SIGTERM to each
process group) and SIGKILL after ``orphan_timeout`` only when the broker
itself stops. Until a supervisor has said ``ready`` once, though, its death
is a failed start-up: the broker reports it (`StartupReport`) and stops.

The supervisor's stdout and stderr are pipes that the loop reads too
(`OutputRelay`), copying each line to the broker's own output (`LogSink`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import selectors
import signal
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial

import prctl

from chapiteau.broker import fd_store
from chapiteau.broker.binding import BindError, BoundSocket, abandon, bind_unix
from chapiteau.broker.config import BrokerConfig, load_broker_config
from chapiteau.broker.event_log import log
from chapiteau.broker.held import HeldFds
from chapiteau.broker.launcher import Launcher
from chapiteau.broker.logs import LogFile, LogSink
from chapiteau.broker.orphans import Orphan, Retirement, instance_mark
from chapiteau.broker.privileges import ServiceUser
from chapiteau.broker.safe_paths import Entry, UnsafePathError, make_directory
from chapiteau.broker.sd_notify import Notifier
from chapiteau.broker.service import Peer, Reply, Service
from chapiteau.broker.service_manager import ServiceManager
from chapiteau.broker.socket_table import ReloadError, apply_reload, close_all
from chapiteau.broker.startup import StartupReport
from chapiteau.broker.supervisor_output import OutputRelay, recent_lines
from chapiteau.broker.supervisor_process import (
    Supervisor,
    SupervisorStartError,
    start_supervisor,
    supervisor_argv,
    supervisor_environment,
)
from chapiteau.protocol.broker_messages import (
    MAX_FDS_PER_MESSAGE,
    Error,
    ProtocolError,
    Reloaded,
)
from chapiteau.protocol.channel import channel_pair, close_fds, receive, refuse_fds, send
from chapiteau.protocol.constants import EX_CONFIG
from chapiteau.protocol.ini import ConfigError

BACKOFF_FIRST = 0.1
"""The delay before the second restart in a row of a supervisor that crash-loops (the
first is immediate: its workers wait to be adopted)."""
BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0
"""A supervisor that ran this long is healthy: the next restart starts the backoff anew."""
MAX_PEERS = 8
"""Connections at once (connect mode); a newcomer beyond it evicts the oldest un-greeted one."""
HELLO_DEADLINE = 5.0
"""Seconds an accepted connection has to say hello; then it is dropped (its only idle limit)."""
MAX_FDS_IN_FLIGHT = 2 * MAX_FDS_PER_MESSAGE
"""Fds in replies that peers have not read yet, over all peers: every one is charged to root."""
FORWARDED = {signal.SIGHUP: "reload", signal.SIGUSR1: "reopen_logs", signal.SIGUSR2: "upgrade"}
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
LEAVING = signal.SIGTTIN
"""Exit at once and leave the supervisor and its workers serving, for a new broker to take
over (broker/orphans.py): the broker upgrade. Never sent by accident: the broker reads no
terminal."""


class Broker:
    """Holds the sockets, runs the supervisor, answers it, restarts it.

    `run` is the whole loop. Its steps are public, as a gunicorn arbiter's are, so
    that a test can drive one at a time on real sockets and build the batches a
    hostile peer can only get by racing the kernel: `dispatch` (one select batch),
    `next_timeout` and `run_timers`, `reap` (SIGCHLD), `add_peer`, `serve` and
    `drop_peer` (a connection), `stop` (SIGTERM) and `close`.
    """

    def __init__(
        self,
        config: BrokerConfig,
        sockets: dict[str, BoundSocket],
        user: ServiceUser,
        launcher: Launcher | None,
        supervisor_options: Sequence[str] = (),
        listener: socket.socket | None = None,
        startup: StartupReport | None = None,
        log_sink: LogSink | None = None,
        log_file: LogFile | None = None,
        notifier: Notifier | None = None,
        orphans: Iterable[Orphan] = (),
    ) -> None:
        self.config = config
        self.user = user
        self.launcher = launcher
        """Starts each supervisor for us (we are confined); None in connect mode."""
        self.supervisor_options = list(supervisor_options)
        self.service = Service(
            sockets,
            self._reload,
            self._shutdown_requested,
            self._supervisor_ready,
            self._reload_done,
            HeldFds(config.max_held_fds),
            self._supervisor_handing_over,
        )
        self.systemd = ServiceManager(notifier or Notifier(None))
        """What systemd hears of the service (nothing without ``NOTIFY_SOCKET``)."""
        self.selector = selectors.DefaultSelector()
        self.peers: dict[socket.socket, Peer] = {}
        self.supervisor: Supervisor | None = None
        self.supervisor_channel: socket.socket | None = None
        self.supervisor_started = 0.0
        self.starts = 0
        self.backoff = 0.0
        self.handing_over = False
        """The current supervisor said ``handover``: its exit is an upgrade, not a crash."""
        self.restart_at: float | None = None
        self.kill_orphans_at: float | None = None
        self.stopping = False
        self.stop_status = 0
        """The exit status once stopped: EX_CONFIG after a refused config, else 0."""
        self.exit_status: int | None = None
        self.listener = listener
        """Connect mode: the socket made by `listen_for_supervisors` before privileges drop."""
        self.startup = startup or StartupReport(None)
        self.supervisor_was_ready = False
        """A supervisor said ``ready``: from then on a supervisor that dies is restarted."""
        stderr = log_sink or LogSink(2)
        self.output_sinks = (LogSink(1, stderr.json_lines), stderr)
        """Where the supervisor's stdout and stderr lines go: the broker's own."""
        self.outputs: list[OutputRelay] = []
        """The stdout and stderr pipes of the current supervisor."""
        self.relays: set[OutputRelay] = set()
        """Every pipe still open: the workers of a dead supervisor may keep writing to its own."""
        self.recent = recent_lines()
        self.log_file = log_file
        """``--log-output``, reopened on USR1 (a rotation renamed it)."""
        self.notifier = notifier or Notifier(None)
        """systemd's notify socket (fd store); a no-op when not under systemd."""
        self.retirement = Retirement(orphans)
        """The orphaned workers of a previous broker, stopped once a supervisor is ready."""

    # -- the loop -------------------------------------------------------------

    def run(self) -> int:
        """Serve until told to stop; return the exit status."""
        prctl.set_child_subreaper(1)
        raise_fd_limit()
        self._install_signals()
        if self.config.socket_path:
            self._listen()
            self.startup.ready()
            self.systemd.supervisor_ready(f"waiting for supervisors on {self.config.socket_path}")
        else:
            self._start_supervisor()
        while self.exit_status is None:
            self.dispatch(self.selector.select(self.next_timeout()))
            self.run_timers()
        self.close()
        return self.exit_status

    def dispatch(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        """Run the callback of each ready fd that is still registered.

        An earlier callback of the same batch may have dropped a peer (the
        supervisor's exit drops its channel while a child it forked still
        writes to it), and a peer accepted meanwhile may even have its fd
        number: only a key that is still the registered one is acted on.
        """
        for key, _ in events:
            if self.selector.get_map().get(key.fd) is key:
                callback: Callable[[], None] = key.data
                callback()

    def next_timeout(self) -> float | None:
        """Until the nearest deadline; None (sleep until an event) when nothing is due."""
        hello_deadlines = [peer.hello_by for peer in self.peers.values() if not peer.greeted]
        timers = (
            self.restart_at,
            self.kill_orphans_at,
            self.systemd.watchdog_at,
            self.retirement.kill_at,
        )
        deadlines = [t for t in (*timers, *hello_deadlines) if t is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def run_timers(self) -> None:
        """Do what is due: a watchdog ping, a silent peer dropped, a restart, a kill."""
        now = time.monotonic()
        self.systemd.watchdog(now)
        for conn, peer in list(self.peers.items()):
            if not peer.greeted and peer.hello_by is not None and now >= peer.hello_by:
                log.warning("peer_dropped", peer=peer.name, reason="no hello in time")
                self.drop_peer(conn)
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self._start_supervisor()
        if self.kill_orphans_at is not None and now >= self.kill_orphans_at:
            self.kill_orphans_at = None
            self._signal_orphans(signal.SIGKILL)
        if self.retirement.kill_at is not None and now >= self.retirement.kill_at:
            self.retirement.kill()

    # -- signals --------------------------------------------------------------

    def _install_signals(self) -> None:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._signal_pipe = (reader, writer)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for signum in (*STOPPING, *FORWARDED, LEAVING, signal.SIGCHLD):
            signal.signal(signum, _wake_only)
        self.selector.register(reader, selectors.EVENT_READ, self._on_signals)

    def _on_signals(self) -> None:
        reader = self._signal_pipe[0]
        try:
            received = reader.recv(4096)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(received):
            if signum == signal.SIGCHLD:
                self.reap()
            elif signum in STOPPING:
                log.info("stop_requested", signal=signal.Signals(signum).name)
                self.stop()
            elif signum == LEAVING:
                self._leave()
            elif signum in FORWARDED:
                if signum == signal.SIGUSR1 and self.log_file is not None:
                    self.log_file.reopen()
                if signum == signal.SIGHUP:
                    self.systemd.reloading(forwarded=self.supervisor is not None)
                if self.supervisor is not None:
                    log.info("signal_forwarded", signal=signal.Signals(signum).name)
                    self.supervisor.send_signal(signum)

    # -- the supervisor -------------------------------------------------------

    def _start_supervisor(self) -> None:
        assert self.launcher is not None
        broker_end, supervisor_end = channel_pair()
        channel_fd = supervisor_end.fileno()
        pipes = [os.pipe() for _ in self.output_sinks]
        argv = supervisor_argv(self.config, channel_fd, self.supervisor_options)
        env = supervisor_environment(
            self.user,
            channel_fd,
            os.environ,
            self.config.supervisor_env,
            start=self.starts + 1,
            instance=instance_mark(self.config.path),
        )
        try:
            self.supervisor = start_supervisor(
                self.launcher, argv, channel_fd, env, pipes[0][1], pipes[1][1]
            )
        except SupervisorStartError as exc:
            broker_end.close()
            for reader, _ in pipes:
                os.close(reader)
            if self.supervisor_was_ready:
                log.error("supervisor_start_failed", error=str(exc))
                self.systemd.status(f"cannot start the supervisor ({exc}); retrying")
                self._schedule_restart()
            else:
                self._start_up_failed(1, str(exc))
            return
        finally:
            supervisor_end.close()
            for _, writer in pipes:
                os.close(writer)
        self.recent = recent_lines()
        self.outputs = [
            self._add_output(OutputRelay(reader, sink, self.recent, source))
            for (reader, _), sink, source in zip(
                pipes, self.output_sinks, ("stdout", "stderr"), strict=True
            )
        ]
        self.starts += 1
        self.supervisor_started = time.monotonic()
        self.supervisor_channel = broker_end
        self.add_peer(broker_end, f"supervisor[{self.supervisor.pid}]")
        log.info(
            "supervisor_started", pid=self.supervisor.pid, user=self.user.name, start=self.starts
        )

    def _add_output(self, relay: OutputRelay) -> OutputRelay:
        self.selector.register(relay.fd, selectors.EVENT_READ, lambda: self._relay(relay))
        self.relays.add(relay)
        return relay

    def _relay(self, relay: OutputRelay, drain: bool = False) -> None:
        """Relay what ``relay``'s pipe holds; forget the pipe once every writer closed it."""
        if relay not in self.relays:
            return  # closed earlier in the same batch of events (its supervisor exited)
        if relay.drain() if drain else relay.read():
            return
        self.selector.unregister(relay.fd)
        relay.close()
        self.relays.discard(relay)
        if relay in self.outputs:
            self.outputs.remove(relay)

    def _supervisor_ready(self, peer: Peer) -> None:
        """The supervisor we started says it serves: start-up is over.

        The orphans of a previous broker have served until now: they can go.
        """
        self._retire_orphans()
        if self.supervisor is None or self.peers.get(self.supervisor_channel) is not peer:
            return
        if not self.supervisor_was_ready:
            self.supervisor_was_ready = True
            log.info("service_ready", supervisor=self.supervisor.pid)
            self.startup.ready()
        sockets = len(self.service.sockets)
        self.systemd.supervisor_ready(
            f"serving: supervisor pid {self.supervisor.pid} (start {self.starts}), "
            f"{sockets} socket{'s' if sockets != 1 else ''}"
        )

    def _reload_done(self, peer: Peer, ok: bool) -> None:
        """The supervisor we started finished the reload a SIGHUP asked for."""
        if self.supervisor is not None and self.peers.get(self.supervisor_channel) is peer:
            self.systemd.reload_done(ok)

    def _retire_orphans(self) -> None:
        if self.retirement.started or not self.retirement.orphans:
            return
        for pidfd in self.retirement.orphans:
            self.selector.register(pidfd, selectors.EVENT_READ, partial(self._orphan_exited, pidfd))
        self.retirement.start(self.config.orphan_timeout)

    def _orphan_exited(self, pidfd: int) -> None:
        self.selector.unregister(pidfd)
        self.retirement.exited(pidfd)

    def _start_up_failed(self, status: int, message: str) -> None:
        """The first supervisor never became ready: stop with ``status``, say why."""
        log.error("start_up_failed", reason=message, exit_status=status)
        self.systemd.stop()
        output = [line.decode("utf-8", "backslashreplace") for line in self.recent]
        self.startup.failed(status, message, output)
        self.stopping = True
        self.stop_status = status
        self.restart_at = None
        if self.supervisor is None and not self._children():
            self.exit_status = status

    def _supervisor_handing_over(self, peer: Peer) -> None:
        """The supervisor we started exits for an upgrade: its successor starts at once."""
        if self.supervisor is not None and self.peers.get(self.supervisor_channel) is peer:
            self.handing_over = True
            log.info("supervisor_handing_over", pid=self.supervisor.pid)

    def _schedule_restart(self) -> None:
        """Restart now, unless the supervisor crash-loops: then after a growing delay."""
        if self.handing_over or time.monotonic() - self.supervisor_started >= STABLE_AFTER:
            self.backoff = 0.0
        self.restart_at = time.monotonic() + self.backoff
        log.info("supervisor_restart_scheduled", delay=round(self.backoff, 3))
        self.backoff = min(max(self.backoff * 2, BACKOFF_FIRST), BACKOFF_MAX)

    def reap(self) -> None:
        """Collect every exited child (on SIGCHLD): the supervisor, helpers, orphans."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            code = os.waitstatus_to_exitcode(status)
            if self.supervisor is not None and pid == self.supervisor.pid:
                self.supervisor.returncode = code
                self._supervisor_exited(code)
            elif self.launcher is not None and pid == self.launcher.pid:
                log.error("launcher_died", pid=pid, exit_code=code, hint="restart chapiteau")
            else:
                log.info("orphan_reaped", pid=pid, exit_code=code)
        if self.stopping and self.supervisor is None and not self._children():
            self.exit_status = self.stop_status

    def _supervisor_exited(self, code: int) -> None:
        assert self.supervisor is not None
        pid = self.supervisor.pid
        self.supervisor = None
        for relay in list(self.outputs):
            self._relay(relay, drain=True)
        if self.supervisor_channel is not None:
            self.drop_peer(self.supervisor_channel)
            self.supervisor_channel = None
        self._after_supervisor(pid, code)
        if self.stopping:
            self._stop_orphans()
        self.handing_over = False

    def _after_supervisor(self, pid: int, code: int) -> None:
        """Report the end of supervisor ``pid``; restart one unless the broker stops."""
        if self.stopping:
            log.info("supervisor_stopped", pid=pid, exit_code=code)
            return
        if code == EX_CONFIG and not self.supervisor_was_ready:
            log.error("supervisor_refused_config", pid=pid, config=self.config.path)
            self._start_up_failed(EX_CONFIG, f"the supervisor refused {self.config.path}")
            return
        if not self.supervisor_was_ready:
            reason = f"the supervisor (pid {pid}) {_ended(code)} before it was ready"
            self._start_up_failed(1, reason)
            return
        if self.handing_over:
            log.info("supervisor_handed_over", pid=pid, exit_code=code)
        elif code == 0:
            log.info("supervisor_exited", pid=pid)
        else:
            log.error("supervisor_died", pid=pid, exit_code=code)
        self.systemd.status(f"the supervisor (pid {pid}) {_ended(code)}; restarting it")
        self._schedule_restart()

    def _stop_orphans(self) -> None:
        """The broker stops: SIGTERM to the orphans now, SIGKILL after ``orphan_timeout``."""
        if self._children() and self.kill_orphans_at is None:
            self._signal_orphans(signal.SIGTERM)
            self.kill_orphans_at = time.monotonic() + self.config.orphan_timeout

    def _signal_orphans(self, signum: int) -> None:
        """Signal the process group of every child that is not the current supervisor."""
        keep = self.supervisor.pid if self.supervisor is not None else None
        for pid in self._children():
            if pid == keep:
                continue
            with contextlib.suppress(ProcessLookupError):
                group = os.getpgid(pid)
                if group == os.getpgrp():
                    os.kill(pid, signum)
                else:
                    os.killpg(group, signum)
                log.info("orphan_signalled", pid=pid, signal=signal.Signals(signum).name)

    def _children(self) -> list[int]:
        """Our children but the launcher: the supervisor and orphaned workers."""
        launcher = self.launcher.pid if self.launcher is not None else None
        return [pid for pid in _all_children() if pid != launcher]

    def stop(self) -> None:
        """Stop (SIGTERM, SIGINT, a shutdown request): the supervisor first, then the loop."""
        if self.stopping and self.supervisor is None:
            return
        self.stopping = True
        self.systemd.stop()
        self.restart_at = None
        if self.supervisor is not None:
            self.supervisor.send_signal(signal.SIGTERM)
        elif self._children():
            self._stop_orphans()
        else:
            self.exit_status = 0

    def _leave(self) -> None:
        """Exit now and leave the workers serving: the next broker on this config retires them.

        The supervisor is killed (its logs would go to pipes nobody reads any
        more): its workers keep serving on their copies of the listening
        sockets, unmanaged until the next broker recovers the sockets from them
        (broker/orphans.py). Unix socket files stay where they are.
        """
        log.info("broker_leaving", supervisor=self.supervisor.pid if self.supervisor else None)
        if self.supervisor is not None:
            self.supervisor.send_signal(signal.SIGKILL)
        for bound in self.service.sockets.values():
            if bound.path is not None:
                bound.path.directory.close()
            bound.sock.close()
        self.service.sockets.clear()
        self.exit_status = 0

    def _shutdown_requested(self) -> None:
        self.stopping = True
        self.systemd.stop()
        self.restart_at = None
        if self.supervisor is None:
            self.exit_status = 0

    def _reload(self) -> Reloaded:
        try:
            config = load_broker_config(self.config.path)
        except (ConfigError, OSError) as exc:
            raise ReloadError(str(exc)) from None
        before = dict(self.service.sockets)
        result = apply_reload(self.service.sockets, config.sockets, self.user)
        fd_store.update(self.notifier, before, self.service.sockets)
        self.config = config
        return result

    # -- peers ----------------------------------------------------------------

    def _listen(self) -> None:
        assert self.listener is not None
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        log.info("broker_listening", path=self.config.socket_path, user=self.user.name)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        uid = peer_uid(conn)
        if uid in (self.user.uid, 0) and len(self.peers) >= MAX_PEERS:
            self._evict_ungreeted()
        if uid not in (self.user.uid, 0) or len(self.peers) >= MAX_PEERS:
            log.warning("peer_rejected", uid=uid, peers=len(self.peers))
            conn.close()
            return
        self.add_peer(conn, f"uid {uid}", time.monotonic() + HELLO_DEADLINE)
        log.info("peer_accepted", uid=uid, peers=len(self.peers))

    def _evict_ungreeted(self) -> None:
        """Drop the oldest connection that has not said hello, if any, to make room."""
        waiting = [(peer.hello_by, conn) for conn, peer in self.peers.items() if not peer.greeted]
        if waiting:
            _, conn = min(waiting, key=lambda pair: pair[0] or 0.0)
            log.warning("peer_evicted", peer=self.peers[conn].name, reason="no hello yet")
            self.drop_peer(conn)

    def add_peer(self, conn: socket.socket, name: str, hello_by: float | None = None) -> None:
        """Serve ``conn``; a peer that has not said hello by ``hello_by`` is dropped."""
        conn.setblocking(False)
        self.peers[conn] = Peer(name, hello_by=hello_by)
        self.selector.register(conn, selectors.EVENT_READ, lambda: self.serve(conn))

    def drop_peer(self, conn: socket.socket) -> None:
        """Forget and close a peer's connection."""
        if self.peers.pop(conn, None) is not None:
            self.selector.unregister(conn)
        conn.close()

    def serve(self, conn: socket.socket) -> None:
        """Answer what a peer sent (its fd is readable)."""
        peer = self.peers[conn]
        try:
            self._answer(conn, peer)
        except Exception:
            # Last resort: a bug in handling one peer's frame costs that peer its
            # connection, never the root broker and every listening socket with it.
            log.exception("peer_handling_failed", peer=peer.name)
            self.drop_peer(conn)

    def _answer(self, conn: socket.socket, peer: Peer) -> None:
        try:
            received = receive(conn)
        except BlockingIOError:
            return
        except ProtocolError as exc:
            log.warning("bad_frame", peer=peer.name, code=exc.code, reason=exc.reason)
            self._reply(conn, peer, 0, Reply(Error(exc.code, exc.reason)))
            return
        except OSError as exc:
            log.warning("peer_failed", peer=peer.name, error=str(exc))
            self.drop_peer(conn)
            return
        if received is None:
            self.drop_peer(conn)
            return
        self._reply(conn, peer, received.request_id, self.service.handle(peer, received))

    def _reply(self, conn: socket.socket, peer: Peer, request_id: int, reply: Reply) -> None:
        try:
            refusal = self._fds_refusal(conn, len(reply.fds)) if reply.fds else None
            if refusal is not None:
                log.warning(
                    "request_refused", peer=peer.name, code=refusal.code, reason=refusal.reason
                )
                reply = Reply(refusal, close_after=reply.close_after)
            send(conn, reply.message, request_id, reply.fds)
            if reply.fds:
                peer.fds_sent = len(reply.fds)
        except OSError as exc:
            log.warning("reply_failed", peer=peer.name, error=str(exc))
            self.drop_peer(conn)
        finally:
            close_all(reply.close_after)
            close_fds(reply.discard)

    def _fds_refusal(self, conn: socket.socket, count: int) -> Error | None:
        """Why ``count`` fds must not be sent to this peer now, or None.

        Every fd in a reply the peer has not read is charged to root's count of
        fds in flight, which the kernel caps for every root process without
        CAP_SYS_RESOURCE (ETOOMANYREFS past RLIMIT_NOFILE): a peer gets fds only
        once it has read every earlier reply, and all peers together hold at
        most MAX_FDS_IN_FLIGHT unread.
        """
        if unread_bytes(conn):
            return Error("fds_in_flight", "read the replies to your earlier requests first")
        in_flight = sum(
            peer.fds_sent
            for other, peer in self.peers.items()
            if other is not conn and unread_bytes(other)
        )
        if in_flight + count > MAX_FDS_IN_FLIGHT:
            return Error(
                "fds_in_flight",
                f"other peers have {in_flight} fds unread, at most {MAX_FDS_IN_FLIGHT}: retry",
            )
        return None

    def close(self) -> None:
        """At exit: drain the supervisor's output, close the sockets and the channels."""
        for relay in list(self.relays):
            self._relay(relay, drain=True)
        for relay in self.relays:
            self.selector.unregister(relay.fd)
            relay.close()
        if not self.startup.done:
            self.startup.failed(self.exit_status or 1, "stopped before the supervisor was ready")
        for conn in list(self.peers):
            self.drop_peer(conn)
        if self.listener is not None:
            # Its file is removed by whoever made it (main), through a checked directory fd.
            self.listener.close()
        close_all(self.service.sockets.values())
        for pidfd in self.retirement.orphans:
            self.selector.unregister(pidfd)
        self.retirement.close()
        self.service.held.close()
        if self.launcher is not None:
            self.launcher.close()
        log.info("broker_stopped", exit_status=self.exit_status)


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard one: the broker may hold an fd per worker
    pipe (``[broker] max_held_fds``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _ended(code: int) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _wake_only(signum: int, frame: object) -> None:
    """Signals only wake the loop (through the wakeup fd); the loop handles them."""


def _all_children() -> list[int]:
    """The broker's current children, from /proc (orphans land here: we are a subreaper)."""
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(word) for word in listing.read().split()]
    except OSError:
        return []


def unread_bytes(conn: socket.socket) -> int:
    """Bytes sent on ``conn`` that its peer has not read yet (SIOCOUTQ of a unix socket)."""
    return struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, bytes(4)))[0]


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def listen_for_supervisors(
    path: str, user: ServiceUser, owner: int = -1
) -> tuple[socket.socket, Entry]:
    """Listen on ``path`` for a separately started supervisor (connect mode).

    A missing directory is created 0750 (whatever the umask) with the service
    user's group, owned by ``owner`` (the broker's own account, which can then
    still remove the socket once it dropped root; -1: whoever creates it), so
    that only the broker and that group can even reach the socket;
    the peer's uid is checked again on every connection. The directory must not
    be writable by the service user (broker/safe_paths.py). Returns the
    listening socket and its file, which the caller removes at the end
    (``binding.release``). BindError says what went wrong, for the operator.
    """
    where = f"[broker] socket_path = {path}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    refuse_fds(listener)
    entry = None
    try:
        make_directory(os.path.dirname(path), user, 0o750, owner, user.gid)
        entry = bind_unix(listener, path, user, 0o117, replace=None)
        entry.change(gid=user.gid)
        listener.listen(MAX_PEERS)
    except (BindError, UnsafePathError) as exc:
        abandon(listener, entry)
        raise BindError(f"{where}: {exc}") from None
    except OSError as exc:
        abandon(listener, entry)
        raise BindError(f"{where}: cannot listen: {exc.strerror}") from None
    listener.setblocking(False)
    return listener, entry
