"""Bounds on every field a device controls, checked before anything is stored.

A device may be compromised: whatever it sends (Register, hello, heartbeat, command status,
report) is walked field by field, and a string, list or map beyond its bound, or a message
beyond its total size, is refused with ``InvalidInput`` naming the field. One generic walk over
the proto descriptors, so a field added to ``fleet.proto`` later is bounded too.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from controller.errors import InvalidInput

MAX_STRING = 256  # ids, versions, names, backends ...
MAX_ITEMS = 64  # repeated fields and maps
MAX_MESSAGE = 256 << 10  # any one message a device sends (the gRPC limit is far above)
# fields that are allowed to be longer (by name, wherever they appear)
LONG_STRINGS = {"message": 4096, "errors": 2048, "cpu_model": 1024, "enrollment_token": 512, "csr_pem": 8192}
MANY_ITEMS = {"cached_artifacts": 1024, "cpu_flags": 256}


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check_string(value: str | bytes, field: str, name: str) -> None:
    bound = LONG_STRINGS.get(name, MAX_STRING)
    if len(value) > bound:
        raise InvalidInput(f"{field} is {len(value)} characters long; at most {bound} are accepted")


def _walk(msg: Message, prefix: str) -> None:
    for fd, value in msg.ListFields():
        field = _path(prefix, fd.name)
        repeated = fd.is_repeated
        if repeated:
            bound = MANY_ITEMS.get(fd.name, MAX_ITEMS)
            if len(value) > bound:
                raise InvalidInput(f"{field} has {len(value)} entries; at most {bound} are accepted")
        is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
        if is_map:
            for key, item in value.items():
                _check_string(str(key), f"{field} key", fd.name)
                if isinstance(item, Message):
                    _walk(item, f"{field}[{key!r}]")
                elif isinstance(item, (str, bytes)):
                    _check_string(item, f"{field}[{key!r}]", fd.name)
            continue
        items = value if repeated else [value]
        for i, item in enumerate(items):
            where = f"{field}[{i}]" if repeated else field
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                _walk(item, where)
            elif fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                _check_string(item, where, fd.name)


def check_device_message(msg: Message, what: str | None = None) -> None:
    """Raise ``InvalidInput`` unless every field of ``msg`` is within its bound."""
    what = what or msg.DESCRIPTOR.name
    size = msg.ByteSize()
    if size > MAX_MESSAGE:
        raise InvalidInput(f"{what} is {size} bytes; at most {MAX_MESSAGE} are accepted")
    _walk(msg, what)
