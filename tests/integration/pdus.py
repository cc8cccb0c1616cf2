"""Raw DICOM PDUs for hostile-peer tests: built with pynetdicom's encoders, sent on plain sockets."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"


def associate_rq(*abstract_syntaxes: str, called: str = "XRAYGW") -> bytes:
    """An A-ASSOCIATE-RQ proposing each syntax (Implicit VR LE) as contexts 1, 3, 5…"""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "HOSTILE"
    primitive.called_ae_title = called
    contexts = []
    for n, syntax in enumerate(abstract_syntaxes or (VERIFICATION,)):
        context = build_context(syntax, IMPLICIT_LE)
        context.context_id = 2 * n + 1
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1"
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def p_data(context_id: int, header: int, data: bytes) -> bytes:
    """One P-DATA-TF PDU with one PDV (header: bit 0 command, bit 1 last fragment)."""
    pdv = struct.pack(">LB", len(data) + 2, context_id) + bytes([header]) + data
    return b"\x04\x00" + struct.pack(">L", len(pdv)) + pdv


def _command(message: C_ECHO_RQ | C_STORE_RQ) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, message.command_set)
    return bytes(buffer.getvalue())


def echo_command() -> bytes:
    primitive = C_ECHO()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return _command(message)


def store_command(sop_instance_uid: str = "1.2.3.4.5.6") -> bytes:
    """A C-STORE-RQ command announcing a dataset (which must follow as data PDVs)."""
    primitive = C_STORE()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Priority = 0
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    message.command_set.CommandDataSetType = 0x0001  # a dataset follows
    return _command(message)


def connect(port: int, *, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def associate(port: int, *abstract_syntaxes: str) -> socket.socket:
    """A raw socket with an accepted association (A-ASSOCIATE-AC read off it)."""
    sock = connect(port)
    sock.settimeout(30)
    sock.sendall(associate_rq(*abstract_syntaxes))
    header = read_exact(sock, 6)
    if header[:1] != b"\x02":
        sock.close()
        raise ConnectionRefusedError(f"association not accepted: {header!r}")
    read_exact(sock, struct.unpack(">L", header[2:])[0])
    return sock


def read_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def wait_closed(sock: socket.socket, *, timeout: float = 60) -> bytes:
    """Read until the peer closes (or resets) the connection; returns everything read."""
    return _read_until(sock, lambda data: False, timeout, "the gateway kept the connection open")


def wait_abort(sock: socket.socket, *, timeout: float = 60) -> bytes:
    """Read until an A-ABORT arrives or the peer closes; returns everything read."""
    return _read_until(sock, lambda data: A_ABORT in data, timeout, "no A-ABORT and no close in")


A_ABORT = b"\x07\x00\x00\x00\x00\x04"  # PDU type and length of an A-ABORT


def _read_until(
    sock: socket.socket, done: Callable[[bytes], bool], timeout: float, failure: str
) -> bytes:
    sock.settimeout(1)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data
        data += chunk
        if not chunk or done(data):
            return data
    raise AssertionError(f"{failure} {timeout} s; read {data[:64]!r}")
