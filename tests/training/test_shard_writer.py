"""The shard writer's file (training.shards.HashingWriter): whatever mix of small writes,
images read into its buffer and writes larger than a chunk, the file holds exactly those bytes
in order and the digest is their sha256, with the hash overlapped in a thread or not (the
index's sha256 is what a re-run trusts to keep a shard)."""

from __future__ import annotations

import hashlib
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from isic2020.training.shards import HashingWriter

CHUNK = HashingWriter.CHUNK
#: ("write", n): a write of n bytes; ("fill", n): n bytes put into buffer() (at most its room).
OPS = st.lists(
    st.tuples(st.sampled_from(["write", "fill"]),
              st.one_of(st.integers(0, 600), st.integers(CHUNK - 700, CHUNK + 700),
                        st.integers(2 * CHUNK, 3 * CHUNK))),
    max_size=12)


@settings(max_examples=40, deadline=None)
@given(ops=OPS, overlap=st.booleans(), seed=st.integers(0, 255))
def test_bytes_and_digest_are_exact(ops: list[tuple[str, int]], overlap: bool, seed: int) -> None:
    sink = io.BytesIO()
    out = HashingWriter(sink, overlap=overlap)
    expected = bytearray()
    for i, (op, n) in enumerate(ops):
        data = bytes((seed + i + j) % 251 for j in range(min(n, 4096))) * (n // 4096 + 1)
        data = data[:n]
        if op == "write":
            out.write(data)
        else:
            room = out.buffer()
            k = min(len(room), n)
            room[:k] = data[:k]
            out.write_buffer(room, k)
            data = data[:k]
        expected += data
        assert out.tell() == len(expected)
    digest = out.hexdigest()
    assert sink.getvalue() == bytes(expected)
    assert digest == hashlib.sha256(expected).hexdigest()
    assert out.written == len(expected)


def test_buffer_always_has_room() -> None:
    """An image is read into the buffer's free room: there is always at least MIN_ROOM."""
    out = HashingWriter(io.BytesIO())
    for n in (CHUNK - 1, 1, CHUNK - HashingWriter.MIN_ROOM + 1, 5):
        out.write(bytes(n))
        assert len(out.buffer()) >= HashingWriter.MIN_ROOM
    out.hexdigest()
