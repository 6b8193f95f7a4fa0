"""A DICOM requestor over a plain socket, for the fuzz harness (PS3.8 9, PS3.7 9-10).

Every byte it sends is chosen by the caller: PDUs, association items, command
sets and data sets (which are never decoded or re-encoded, so a damaged data
set reaches the server as it is). Every read has a deadline, so a server that
does not answer is seen as a :class:`NoAnswer`, never as a hung test.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"

# PDU types (PS3.8 9.3.1)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)
CLOSED = 0   # read_pdu: the server closed the connection

# Command fields (PS3.7 E.1)
C_STORE_RQ, C_FIND_RQ, C_ECHO_RQ = 0x0001, 0x0020, 0x0030
N_SET_RQ, N_CREATE_RQ = 0x0120, 0x0140
NO_DATA_SET, DATA_SET = 0x0101, 0x0000
PENDING = (0xFF00, 0xFF01)


class NoAnswer(AssertionError):
    """The server neither answered nor closed within the deadline."""


class Ended(Exception):
    """The server ended the association (A-ABORT, A-RELEASE-RP, reject or close)."""

    def __init__(self, kind: int, body: bytes = b"") -> None:
        names = {CLOSED: "connection closed", ABORT: "A-ABORT", ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
                 RELEASE_RP: "A-RELEASE-RP"}
        detail = ""
        if kind == ASSOCIATE_RJ and len(body) >= 4:  # PS3.8 9.3.4: result, source, reason
            detail = f" (result {body[1]}, source {body[2]}, reason {body[3]})"
        elif kind == ABORT and len(body) >= 4:       # PS3.8 9.3.8: source, reason
            detail = f" (source {body[2]}, reason {body[3]})"
        super().__init__(names.get(kind, f"PDU type {kind:#x}") + detail)
        self.kind = kind
        self.body = body


def pdu(kind: int, body: bytes, length: int | None = None) -> bytes:
    """A PDU; ``length`` lies about the body's length when given."""
    return struct.pack(">BBL", kind, 0, len(body) if length is None else length) + body


def item(kind: int, body: bytes, length: int | None = None) -> bytes:
    """An association item (PS3.8 9.3.2.x): type, reserved, 2-byte length."""
    return struct.pack(">BBH", kind, 0, len(body) if length is None else length) + body


def uid_item(kind: int, uid: str) -> bytes:
    return item(kind, uid.encode("ascii"))


def context_item(cx_id: int, abstract: str, syntaxes: list[str]) -> bytes:
    """Presentation context item of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2)."""
    return item(0x20, bytes([cx_id, 0, 0, 0]) + uid_item(0x30, abstract)
                + b"".join(uid_item(0x40, ts) for ts in syntaxes))


def user_info(max_pdu: int = 16384, extra: bytes = b"") -> bytes:
    """User information item: maximum length, implementation class UID (PS3.7 D.3.3)."""
    return item(0x50, item(0x51, struct.pack(">L", max_pdu))
                + uid_item(0x52, "1.2.826.0.1.3680043.9.7433.1") + extra)


def associate_rq(contexts: list[tuple[int, str, list[str]]], *, called: str = "ORTHANC",
                 calling: str = "FUZZSCU", max_pdu: int = 16384,
                 version: int = 1, app_context: bytes | None = None,
                 extra_items: bytes = b"", user: bytes | None = None) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    body = (struct.pack(">HH", version, 0) + called.encode("latin-1").ljust(16)[:16]
            + calling.encode("latin-1").ljust(16)[:16] + bytes(32)
            + (uid_item(0x10, APPLICATION_CONTEXT) if app_context is None else app_context)
            + b"".join(context_item(*c) for c in contexts)
            + (user_info(max_pdu) if user is None else user) + extra_items)
    return pdu(ASSOCIATE_RQ, body)


def parse_ac(body: bytes) -> tuple[dict[int, str], int]:
    """({accepted context ID: transfer syntax}, peer's maximum PDU length) of an A-ASSOCIATE-AC."""
    pos, accepted, max_pdu = 68, {}, 0
    while pos + 4 <= len(body):
        kind, _, length = struct.unpack_from(">BBH", body, pos)
        value = body[pos + 4:pos + 4 + length]
        if kind == 0x21 and value[2] == 0:  # result 0: acceptance
            ts = value[8:8 + struct.unpack_from(">H", value, 6)[0]]
            accepted[value[0]] = ts.decode("ascii").rstrip("\0 ")
        elif kind == 0x50:
            sub = 0
            while sub + 4 <= len(value):
                skind, _, slen = struct.unpack_from(">BBH", value, sub)
                if skind == 0x51:
                    max_pdu = struct.unpack_from(">L", value, sub + 4)[0]
                sub += 4 + slen
        pos += 4 + length
    return accepted, max_pdu


# -- command sets (PS3.7 6.3.1: always Implicit VR Little Endian) ----------


def element(tag: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian element."""
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def ui(uid: str) -> bytes:
    value = uid.encode("latin-1")
    return value + b"\0" if len(value) % 2 else value


def us(n: int) -> bytes:
    return struct.pack("<H", n)


def command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set, with its group length first."""
    body = b"".join(element(tag, value) for tag, value in sorted(elements))
    return element(0x00000000, struct.pack("<L", len(body))) + body


def store_command(sop_class: str, sop_uid: str, message_id: int) -> bytes:
    return command([(0x00000002, ui(sop_class)), (0x00000100, us(C_STORE_RQ)),
                    (0x00000110, us(message_id)), (0x00000700, us(0)),
                    (0x00000800, us(DATA_SET)), (0x00001000, ui(sop_uid))])


def find_command(sop_class: str, message_id: int) -> bytes:
    return command([(0x00000002, ui(sop_class)), (0x00000100, us(C_FIND_RQ)),
                    (0x00000110, us(message_id)), (0x00000700, us(0)),
                    (0x00000800, us(DATA_SET))])


def echo_command(message_id: int) -> bytes:
    return command([(0x00000002, ui(VERIFICATION)), (0x00000100, us(C_ECHO_RQ)),
                    (0x00000110, us(message_id)), (0x00000800, us(NO_DATA_SET))])


def n_create_command(sop_class: str, sop_uid: str | None, message_id: int) -> bytes:
    elements = [(0x00000002, ui(sop_class)), (0x00000100, us(N_CREATE_RQ)),
                (0x00000110, us(message_id)), (0x00000800, us(DATA_SET))]
    if sop_uid is not None:
        elements.append((0x00001000, ui(sop_uid)))
    return command(elements)


def n_set_command(sop_class: str, sop_uid: str, message_id: int) -> bytes:
    return command([(0x00000003, ui(sop_class)), (0x00000100, us(N_SET_RQ)),
                    (0x00000110, us(message_id)), (0x00000800, us(DATA_SET)),
                    (0x00001001, ui(sop_uid))])


def parse_command(data: bytes) -> dict[int, bytes]:
    """{tag: value} of an Implicit VR Little Endian command set."""
    out, pos = {}, 0
    while pos + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHL", data, pos)
        out[group << 16 | elem] = data[pos + 8:pos + 8 + length]
        pos += 8 + length
    return out


@dataclass
class Response:
    """One DIMSE response: its command elements and its data set bytes, if any."""

    command: dict[int, bytes]
    data: bytes = b""

    @property
    def status(self) -> int:
        return struct.unpack("<H", self.command[0x00000900])[0]

    @property
    def comment(self) -> str:
        return self.command.get(0x00000902, b"").decode("latin-1").strip(" \0")

    @property
    def pending(self) -> bool:
        return self.status in PENDING


@dataclass
class Association:
    """An association set up by hand: ``contexts`` are (abstract syntax, transfer syntax)."""

    port: int
    contexts: list[tuple[str, str]]
    calling: str = "FUZZSCU"
    called: str = "ORTHANC"
    timeout: float = 20.0
    accepted: dict[int, str] = field(default_factory=dict)
    abstract: dict[int, str] = field(default_factory=dict)
    max_pdu: int = 16384
    message_id: int = 0
    last_activity: float = 0.0

    def __post_init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        proposed = []
        for n, (abstract, ts) in enumerate(self.contexts):
            cx_id = 2 * n + 1
            proposed.append((cx_id, abstract, [ts]))
            self.abstract[cx_id] = abstract
        self.sock.sendall(associate_rq(proposed, called=self.called, calling=self.calling))
        kind, body = self.read_pdu()
        if kind != ASSOCIATE_AC:
            self.close()
            raise Ended(kind, body)
        self.accepted, peer_max = parse_ac(body)
        self.max_pdu = min(peer_max or 1 << 20, 1 << 20)
        self.last_activity = time.monotonic()

    def context(self, abstract: str, ts: str) -> int | None:
        for cx_id, accepted_ts in self.accepted.items():
            if self.abstract.get(cx_id) == abstract and accepted_ts == ts:
                return cx_id
        return None

    # -- bytes ------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.last_activity = time.monotonic()

    def read_pdu(self, timeout: float | None = None) -> tuple[int, bytes]:
        """(PDU type, body), (CLOSED, b"") when the server closed; NoAnswer past the deadline."""
        deadline = time.monotonic() + (timeout or self.timeout)
        head = self._exactly(6, deadline)
        if len(head) < 6:
            return CLOSED, b""
        kind, _, length = struct.unpack(">BBL", head)
        body = self._exactly(length, deadline)
        if len(body) < length:
            return CLOSED, b""
        return kind, body

    def _exactly(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAnswer(f"no answer within {self.timeout} s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(max(65536, n - len(self._buf)))
            except TimeoutError:
                raise NoAnswer(f"no answer within {self.timeout} s") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                data, self._buf = self._buf, b""
                return data
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    # -- DIMSE ------------------------------------------------------------

    def next_id(self) -> int:
        self.message_id = self.message_id % 65535 + 1
        return self.message_id

    def send_message(self, cx_id: int, cmd: bytes, data: bytes | None = None) -> None:
        """A command and its data set, one PDV per P-DATA-TF PDU (PS3.8 9.3.5, E.2)."""
        step = max(self.max_pdu - 6, 64)
        out = bytearray()
        for part, flags in ((cmd, 0x01), (data, 0x00)):
            if part is None:
                continue
            view = memoryview(part)
            for start in range(0, max(len(part), 1), step):
                chunk = view[start:start + step]
                last = 0x02 if start + step >= len(part) else 0x00
                out += struct.pack(">BBLLBB", P_DATA, 0, len(chunk) + 6, len(chunk) + 2,
                                   cx_id, flags | last) + chunk
                if len(out) >= 1 << 20:
                    self.send(bytes(out))
                    out.clear()
        if out:
            self.send(bytes(out))

    def read_response(self, timeout: float | None = None) -> Response:
        """The next DIMSE message from the server. Ended if it ends the association."""
        cmd, data, in_data = b"", b"", False
        command = None
        while True:
            kind, body = self.read_pdu(timeout)
            if kind != P_DATA:
                raise Ended(kind, body)
            pos = 0
            while pos + 6 <= len(body):
                length, _cx, control = struct.unpack_from(">LBB", body, pos)
                fragment = body[pos + 6:pos + 4 + length]
                pos += 4 + length
                if control & 0x01:
                    cmd += fragment
                    if control & 0x02:
                        command = parse_command(cmd)
                        in_data = struct.unpack("<H", command.get(0x00000800, us(NO_DATA_SET)))[0] \
                            != NO_DATA_SET
                        if not in_data:
                            return Response(command)
                else:
                    data += fragment
                    if control & 0x02 and command is not None:
                        return Response(command, data)

    def store(self, sop_class: str, sop_uid: str, ts: str, data: bytes) -> Response:
        cx = self.context(sop_class, ts)
        assert cx is not None, f"no accepted context for {sop_class} in {ts}"
        self.send_message(cx, store_command(sop_class, sop_uid, self.next_id()), data)
        return self.read_response()

    def echo(self) -> int:
        cx = self.context(VERIFICATION, "1.2.840.10008.1.2")
        assert cx is not None
        self.send_message(cx, echo_command(self.next_id()))
        return self.read_response().status

    def find(self, sop_class: str, ts: str, identifier: bytes,
             cmd: bytes | None = None) -> list[Response]:
        """Every response of a C-FIND, the final one last."""
        cx = self.context(sop_class, ts)
        assert cx is not None, f"no accepted context for {sop_class} in {ts}"
        self.send_message(cx, cmd or find_command(sop_class, self.next_id()), identifier)
        responses = []
        while True:
            rsp = self.read_response()
            responses.append(rsp)
            if not rsp.pending:
                return responses

    def find_and_cancel(self, sop_class: str, ts: str, identifier: bytes) -> list[Response]:
        """A C-FIND, a C-CANCEL (PS3.7 9.3.2.3) as soon as its first answer is in, then
        every response up to the final one."""
        cx = self.context(sop_class, ts)
        assert cx is not None, f"no accepted context for {sop_class} in {ts}"
        message_id = self.next_id()
        self.send_message(cx, find_command(sop_class, message_id), identifier)
        responses = [self.read_response()]
        if responses[0].pending:
            self.send_message(cx, command([(0x00000100, us(0x0FFF)), (0x00000120, us(message_id)),
                                           (0x00000800, us(NO_DATA_SET))]))
        while responses[-1].pending:
            responses.append(self.read_response())
        return responses

    def release(self) -> None:
        try:
            self.send(pdu(RELEASE_RQ, bytes(4)))
            self.read_pdu(5)
        except (OSError, NoAnswer):
            pass
        self.close()

    def abort(self) -> None:
        try:
            self.send(pdu(ABORT, bytes(4)))
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def wait_closed(sock: socket.socket, timeout: float) -> tuple[bool, bytes, float]:
    """Read until the server closes: (closed in time, what it sent, seconds waited)."""
    started = time.monotonic()
    received = b""
    while True:
        left = timeout - (time.monotonic() - started)
        if left <= 0:
            return False, received, time.monotonic() - started
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            return True, received, time.monotonic() - started
        received += chunk
