"""The bytes of a WebDataset tar, prepared without tarfile's per-member machinery.

A shard of 1,000 images has 9,000 members; ``tarfile.TarFile.addfile`` builds each header
field by field (about 70 us a member, more than encoding the arrays) and webdataset's
TarWriter adds a pax header to every member (it stamps a float mtime). Here every header
is one 512-byte POSIX ustar template with the member's name, size and checksum filled in,
and every ``.npy`` member reuses the header of its dtype and shape. The output is byte for
byte what ``tarfile`` writes with ``format=USTAR_FORMAT`` for the same members (tested),
so any tar reader, webdataset's included, reads it.
"""

from __future__ import annotations

import functools
import io
import tarfile
from collections.abc import Iterable

import numpy as np

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # tarfile pads an archive to a multiple of 20 blocks
#: Owner, mode and mtime of every member (fixed: the bytes depend on the contents only).
UNAME = GNAME = "bigdata"
MODE = 0o444
MTIME = 0


def _octal(value: int, width: int) -> bytes:
    """A numeric ustar field as tarfile writes it: zero-padded octal digits, then NUL."""
    return b"%0*o\0" % (width - 1, value)


def _template() -> bytearray:
    header = bytearray(BLOCK)
    header[100:108] = _octal(MODE, 8)
    header[108:116] = _octal(0, 8)  # uid
    header[116:124] = _octal(0, 8)  # gid
    header[136:148] = _octal(MTIME, 12)
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    header[156:157] = tarfile.REGTYPE
    header[257:265] = tarfile.POSIX_MAGIC
    header[265:265 + len(UNAME)] = UNAME.encode()
    header[297:297 + len(GNAME)] = GNAME.encode()
    # devmajor, devminor: empty (NUL) for a regular file, as tarfile writes them since 3.9
    return header


_TEMPLATE = bytes(_template())


def member(name: str, data: bytes) -> tuple[bytes, bytes, bytes]:
    """One regular-file member: its header, its data, NUL padding to the block (parts, so
    that :func:`archive` copies each payload once)."""
    encoded = name.encode()
    if len(encoded) > 100:
        raise ValueError(f"tar member name over 100 bytes: {name!r}")
    header = bytearray(_TEMPLATE)
    header[0:len(encoded)] = encoded
    header[124:136] = _octal(len(data), 12)
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header), data, _PADDING[: -len(data) % BLOCK]


_PADDING = bytes(BLOCK)


def archive(members: Iterable[tuple[bytes, ...]]) -> bytes:
    """Members joined, the two end-of-archive blocks, padding to tarfile's record size."""
    parts = [part for m in members for part in m]
    size = sum(map(len, parts)) + 2 * BLOCK
    parts.append(bytes(2 * BLOCK + (-size % RECORD)))
    return b"".join(parts)


@functools.lru_cache(maxsize=4096)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    """``array`` in the .npy format, as ``np.save`` writes it (C order, format 1.0)."""
    array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    if array.dtype.hasobject:
        raise ValueError("object arrays have no .npy member (they would need pickle)")
    return _npy_header(np.lib.format.dtype_to_descr(array.dtype), array.shape) + array.tobytes()
