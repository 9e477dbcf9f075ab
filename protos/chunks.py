"""ArtifactChunk on the wire without copying its payload, on both ends of DownloadArtifact.

The controller serializes each chunk once per rollout (``encode_chunk``), and the agent reads
``data`` as a view into the received message (``decode_chunk``). The generated message class
would copy a 4 MiB payload into its arena on parse and again on every access of ``.data`` (upb,
about 0.5 ms each), which was a measurable share of a download. ``decode_chunk`` accepts any valid
encoding of the message (fields in any order, repeated or unknown fields), not only ours.
"""

from __future__ import annotations

from dataclasses import dataclass

from protos import fleet_pb2

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5
_FIELDS = fleet_pb2.ArtifactChunk.DESCRIPTOR.fields_by_name
_OFFSET, _DATA, _TOTAL_SIZE, _SHA256 = (_FIELDS[n].number for n in ("offset", "data", "total_size", "sha256"))


class ChunkDecodeError(ValueError):
    """The bytes are not a well-formed ArtifactChunk."""


@dataclass(frozen=True)
class ChunkView:
    """The fields of one ArtifactChunk; ``data`` is a view into the received message."""

    offset: int
    data: memoryview
    total_size: int
    sha256: str


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_chunk(offset: int, data: bytes, total_size: int, sha256: str) -> bytes:
    """A serialized ArtifactChunk built without copying ``data`` through a message object."""
    head = fleet_pb2.ArtifactChunk(offset=offset, total_size=total_size, sha256=sha256).SerializeToString()
    return b"".join((head, bytes([_DATA << 3 | _WIRE_LEN]), _encode_varint(len(data)), data))


def _read_varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while i < len(buf):
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift >= 70:
            break
    raise ChunkDecodeError("truncated or overlong varint")


def _as_int64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_chunk(raw: bytes) -> ChunkView:
    """Parse a serialized ArtifactChunk; ``data`` is a zero-copy view into ``raw``."""
    buf = memoryview(raw)
    offset = total_size = 0
    data, sha256 = buf[:0], ""
    i, n = 0, len(buf)
    while i < n:
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == _WIRE_VARINT:
            value, i = _read_varint(buf, i)
            if field == _OFFSET:
                offset = _as_int64(value)
            elif field == _TOTAL_SIZE:
                total_size = _as_int64(value)
            elif field in (_DATA, _SHA256):
                raise ChunkDecodeError(f"field {field} has wire type {wire}, expected {_WIRE_LEN}")
        elif wire == _WIRE_LEN:
            length, i = _read_varint(buf, i)
            if i + length > n:
                raise ChunkDecodeError(f"field {field} runs past the end of the message")
            if field == _DATA:
                data = buf[i : i + length]
            elif field == _SHA256:
                try:
                    sha256 = str(buf[i : i + length], "utf-8")
                except UnicodeDecodeError as exc:
                    raise ChunkDecodeError("sha256 is not valid UTF-8") from exc
            elif field in (_OFFSET, _TOTAL_SIZE):
                raise ChunkDecodeError(f"field {field} has wire type {wire}, expected {_WIRE_VARINT}")
            i += length
        elif wire in (_WIRE_I64, _WIRE_I32) and field not in (_OFFSET, _DATA, _TOTAL_SIZE, _SHA256):
            i += 8 if wire == _WIRE_I64 else 4
        else:
            raise ChunkDecodeError(f"field {field} has unsupported wire type {wire}")
        if i > n:
            raise ChunkDecodeError("message truncated")
    return ChunkView(offset=offset, data=data, total_size=total_size, sha256=sha256)
