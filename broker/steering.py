"""Load the eBPF program that steers an ``so_reuseport`` socket's connections to open doors.

One `Steering` per ``so_reuseport`` section: the two maps of
protocol/steering_maps.py and an ``SK_REUSEPORT`` program (attach type
``SELECT_OR_MIGRATE``) that reads them. The broker makes it at start-up, while
it may still call bpf(2) (its seccomp filter forbids it afterwards), attaches
it to every worker's socket of the section after listen (the kernel keeps one
program per reuseport group: each attach replaces it by the same), and hands
the maps' fds to the supervisor (``get_steering``), which fills the slots. The
broker never reads the maps.

The program, for a new connection or one that waits in the queue of a socket
being closed (then the kernel migrates it instead of resetting it)::

    n = count[0]
    if 1 <= n <= SLOTS:
        for i in 0 .. n-1:
            if select(slots[(hash % n + i) % n]) succeeds: break
    return SK_PASS

An empty slot, or a socket of another reuseport group, fails the select; with
nothing selected the kernel chooses among the group's sockets as with no
program. The loop is bounded by SLOTS, so that the verifier (which walks every
iteration) accepts it: about 60,000 instructions verified, once per section.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys

from chapiteau.protocol.steering_maps import (
    MAP_TYPE_ARRAY,
    MAP_TYPE_REUSEPORT_SOCKARRAY,
    PROG_LOAD,
    SLOTS,
    SteeringUnavailable,
    bpf,
    create_map,
    set_count,
)

SO_ATTACH_REUSEPORT_EBPF = 52
PROG_TYPE_SK_REUSEPORT = 21
ATTACH_SK_REUSEPORT_SELECT_OR_MIGRATE = 40
PROGRAM_NAME = b"chapiteau_steer"
LOG_BYTES = 256 * 1024
"""The verifier's log asked for when a load fails, to say why (its last lines)."""
LOG_LINES = 4

# Instruction classes, sizes, modes and operations (linux/bpf_common.h, linux/bpf.h).
ALU, JMP, ALU64, LD, LDX, ST, STX = 0x04, 0x05, 0x07, 0x00, 0x01, 0x02, 0x03
K, X = 0x00, 0x08
W, DW = 0x00, 0x18
IMM, MEM = 0x00, 0x60
ADD, MOD, MOV = 0x00, 0x90, 0xB0
JEQ, JGT, JLT, CALL, EXIT = 0x10, 0x20, 0xA0, 0x80, 0x90
PSEUDO_MAP_FD = 1
MAP_LOOKUP_ELEM = 1
SK_SELECT_REUSEPORT = 82
SK_PASS = 1
HASH_OFFSET = 32
"""offsetof(struct sk_reuseport_md, hash): the connection's 4-tuple hash."""

# Registers: R1-R5 are a call's arguments (and clobbered by it), R0 its result.
R0, R1, R2, R3, R4 = 0, 1, 2, 3, 4
CTX, COUNT, START, PROBE, FP = 6, 7, 8, 9, 10
"""The context, n, hash % n, the probe number, and the frame pointer (read-only)."""
COUNT_KEY_AT, SLOT_KEY_AT = -4, -8
"""Where on the stack the two maps' keys are written."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One struct bpf_insn: opcode, the two register nibbles, offset, immediate."""
    regs = dst | src << 4 if sys.byteorder == "little" else dst << 4 | src
    return struct.pack("=BBhi", code, regs, off, imm)


def _load_map(dst: int, map_fd: int) -> bytes:
    """dst = the map whose fd is ``map_fd`` (ld_imm64: two instruction slots)."""
    return _insn(LD | DW | IMM, dst, PSEUDO_MAP_FD, imm=map_fd) + _insn(0)


class _Jump:
    """A jump to a label, encoded once the label's place is known."""

    __slots__ = ("code", "dst", "src", "imm", "label")

    def __init__(self, code: int, dst: int, label: str, src: int = 0, imm: int = 0) -> None:
        self.code = code
        self.dst = dst
        self.src = src
        self.imm = imm
        self.label = label


def program(count_map: int, slots_map: int) -> bytes:
    """The steering program's instructions, reading the maps whose fds are given."""
    code: list[bytes | _Jump | str] = [
        _insn(ALU64 | MOV | X, CTX, R1),  # ctx = the context (R1 is lost in calls)
        _insn(ST | MEM | W, FP, off=COUNT_KEY_AT, imm=0),  # the count's key: 0
        _load_map(R1, count_map),
        _insn(ALU64 | MOV | X, R2, FP),
        _insn(ALU64 | ADD | K, R2, imm=COUNT_KEY_AT),  # r2 = &key
        _insn(JMP | CALL, imm=MAP_LOOKUP_ELEM),  # r0 = &count[0] or NULL
        _Jump(JMP | JEQ | K, R0, "pass", imm=0),
        _insn(LDX | MEM | W, COUNT, R0),  # n = count[0]
        _Jump(JMP | JEQ | K, COUNT, "pass", imm=0),  # no slot: leave it to the kernel
        _Jump(JMP | JGT | K, COUNT, "pass", imm=SLOTS),  # bounds the loop for the verifier
        _insn(LDX | MEM | W, START, CTX, off=HASH_OFFSET),
        _insn(ALU | MOD | X, START, COUNT),  # start = hash % n
        _insn(ALU64 | MOV | K, PROBE, imm=0),  # i = 0
        "probe",
        _insn(ALU | MOV | X, R1, START),
        _insn(ALU | ADD | X, R1, PROBE),
        _insn(ALU | MOD | X, R1, COUNT),
        _insn(STX | MEM | W, FP, R1, off=SLOT_KEY_AT),  # the slot's key: (start + i) % n
        _insn(ALU64 | MOV | X, R1, CTX),
        _load_map(R2, slots_map),
        _insn(ALU64 | MOV | X, R3, FP),
        _insn(ALU64 | ADD | K, R3, imm=SLOT_KEY_AT),  # r3 = &key
        _insn(ALU64 | MOV | K, R4, imm=0),  # flags
        _insn(JMP | CALL, imm=SK_SELECT_REUSEPORT),  # 0, or an error: empty, another group
        _Jump(JMP | JEQ | K, R0, "pass", imm=0),  # selected
        _insn(ALU64 | ADD | K, PROBE, imm=1),
        _Jump(JMP | JLT | X, PROBE, "probe", src=COUNT),  # next slot while i < n
        "pass",
        _insn(ALU64 | MOV | K, R0, imm=SK_PASS),
        _insn(JMP | EXIT),
    ]
    return _assemble(code)


def _assemble(code: list[bytes | _Jump | str]) -> bytes:
    """Instructions, with each label's place resolved into its jumps' offsets."""
    labels: dict[str, int] = {}
    place = 0
    for item in code:
        if isinstance(item, str):
            labels[item] = place
        else:
            place += 1 if isinstance(item, _Jump) else len(item) // 8
    out = []
    place = 0
    for item in code:
        if isinstance(item, _Jump):
            offset = labels[item.label] - (place + 1)
            out.append(_insn(item.code, item.dst, item.src, offset, item.imm))
            place += 1
        elif isinstance(item, bytes):
            out.append(item)
            place += len(item) // 8
    return b"".join(out)


def load_program(count_map: int, slots_map: int) -> int:
    """Load the steering program; its fd. OSError, saying the verifier's last words if any."""
    instructions = ctypes.create_string_buffer(program(count_map, slots_map))
    count = len(instructions.raw) // 8
    licence = ctypes.create_string_buffer(b"GPL")

    def attempt(log: ctypes.Array | None) -> int:
        address, size = (0, 0) if log is None else (ctypes.addressof(log), len(log))
        attr = struct.pack(
            "=IIQQIIQII16sII",
            PROG_TYPE_SK_REUSEPORT,
            count,
            ctypes.addressof(instructions),
            ctypes.addressof(licence),
            0 if log is None else 1,  # log_level
            size,
            address,
            0,  # kern_version
            0,  # prog_flags
            PROGRAM_NAME,
            0,  # prog_ifindex
            ATTACH_SK_REUSEPORT_SELECT_OR_MIGRATE,
        )
        return bpf(PROG_LOAD, attr)

    try:
        return attempt(None)
    except OSError as first:
        log = ctypes.create_string_buffer(LOG_BYTES)
        try:
            return attempt(log)
        except OSError:
            said = log.value.decode(errors="replace").strip().splitlines()[-LOG_LINES:]
            verifier = f"; the verifier said: {' / '.join(said)}" if said else ""
            raise OSError(first.errno, f"{first.strerror}{verifier}") from None


class Steering:
    """A section's steering program and its maps (fds the broker holds until the section goes)."""

    __slots__ = ("count_map", "slots_map", "program")

    def __init__(self, count_map: int, slots_map: int, program: int) -> None:
        self.count_map = count_map
        self.slots_map = slots_map
        self.program = program

    @classmethod
    def create(cls) -> Steering:
        """New maps (the count 0: no door open) and the program reading them.

        SteeringUnavailable when the kernel refuses any of it (no CAP_BPF, a
        kernel older than 5.14, bpf(2) filtered), its message saying why.
        """
        made: list[int] = []
        step = "create the maps"
        try:
            made.append(create_map(MAP_TYPE_ARRAY, 4, 1))
            made.append(create_map(MAP_TYPE_REUSEPORT_SOCKARRAY, 8, SLOTS))
            set_count(made[0], 0)
            step = "load the program"
            made.append(load_program(made[0], made[1]))
        except OSError as exc:
            for fd in made:
                os.close(fd)
            code = exc.errno or errno.EINVAL
            raise SteeringUnavailable(code, f"cannot {step}: {exc.strerror or exc}") from None
        return cls(*made)

    def attach(self, sock: socket.socket) -> None:
        """Steer the connections of ``sock``'s reuseport group (``sock`` listens); OSError."""
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, self.program)

    def close(self) -> None:
        """Close the maps and the program; the sockets it is attached to keep it."""
        for fd in (self.count_map, self.slots_map, self.program):
            os.close(fd)
