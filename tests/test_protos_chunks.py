"""protos/chunks.py: the zero-copy ArtifactChunk codec agrees with the generated message class."""

from __future__ import annotations

import pytest

from protos import fleet_pb2
from protos.chunks import ChunkDecodeError, decode_chunk, encode_chunk

SHA = "ab" * 32


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint, written here so the test needs no private protobuf API."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_encode_is_a_valid_message_and_decode_reads_it_back() -> None:
    payload = bytes(range(256)) * 1000
    raw = encode_chunk(4096, payload, 10_000_000, SHA)
    msg = fleet_pb2.ArtifactChunk.FromString(raw)
    assert (msg.offset, msg.data, msg.total_size, msg.sha256) == (4096, payload, 10_000_000, SHA)
    view = decode_chunk(raw)
    assert (view.offset, bytes(view.data), view.total_size, view.sha256) == (4096, payload, 10_000_000, SHA)
    assert view.data.obj is raw, "data must be a view into the received bytes, not a copy"


def test_decodes_what_any_encoder_may_write() -> None:
    """The generated serializer's field order, unknown fields of every wire type, a repeated
    scalar (last one wins) and an empty message."""
    standard = fleet_pb2.ArtifactChunk(offset=7, data=b"xyz", total_size=9, sha256=SHA).SerializeToString()
    view = decode_chunk(standard)
    assert (view.offset, bytes(view.data), view.total_size, view.sha256) == (7, b"xyz", 9, SHA)
    unknown = (
        _varint(9 << 3 | 0) + _varint(300)  # varint
        + _varint(10 << 3 | 1) + b"\0" * 8  # fixed64
        + _varint(11 << 3 | 2) + _varint(2) + b"hi"  # length-delimited
        + _varint(12 << 3 | 5) + b"\0" * 4  # fixed32
    )  # fmt: skip
    again = fleet_pb2.ArtifactChunk(offset=8).SerializeToString()
    view = decode_chunk(unknown + standard + again)
    assert (view.offset, bytes(view.data), view.total_size) == (8, b"xyz", 9)
    assert fleet_pb2.ArtifactChunk.FromString(unknown + standard + again).offset == 8
    empty = decode_chunk(b"")
    assert (empty.offset, bytes(empty.data), empty.total_size, empty.sha256) == (0, b"", 0, "")


@pytest.mark.parametrize(
    "raw, reason",
    [
        (encode_chunk(0, b"x" * 100, 100, SHA)[:-1], "past the end"),
        (b"\x08\xff", "varint"),  # offset varint cut off
        (b"\x0a\x01x", "wire type"),  # offset sent as bytes
        (b"\x10\x05", "wire type"),  # data sent as a varint
        (b"\x0b", "wire type"),  # start group: not proto3
        (b"\x22\x02\xff\xfe", "UTF-8"),  # sha256 not text
    ],
)
def test_malformed_chunks_are_refused_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ChunkDecodeError, match=reason):
        decode_chunk(raw)
