"""The prepared tar bytes are what the standard tools write and read."""

import io
import tarfile

import numpy as np
import pytest

from masktok.stages import tarbytes


def tarfile_archive(members: list[tuple[str, bytes]]) -> bytes:
    """The same members written by the standard library's tarfile (ustar, fixed mtime)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), tarbytes.MTIME, tarbytes.MODE
            info.uname, info.gname = tarbytes.UNAME, tarbytes.GNAME
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_archive_is_byte_for_byte_what_tarfile_writes():
    # sizes around the 512-byte block edges and one past the 20-block record
    sizes = [("json", 0), ("npy", 1), ("npy", 511), ("npy", 512), ("json", 513), ("masks.json", 10240),
             ("patch_tokens.npy", 12345)]
    members = [(f"{i:09d}.{ext}", bytes([i % 251]) * size) for i, (ext, size) in enumerate(sizes)]
    ours = tarbytes.archive(tarbytes.member(name, data) for name, data in members)
    assert ours == tarfile_archive(members)
    with tarfile.open(fileobj=io.BytesIO(ours)) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == members


def test_member_names_over_the_ustar_limit_are_refused():
    with pytest.raises(ValueError, match="over 100 bytes"):
        tarbytes.member("x" * 101, b"")


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float16).reshape(3, 4), np.zeros((0, 768), np.float16),
                                   np.arange(6, dtype=">i4"), np.array([[True, False]])])
def test_npy_members_are_what_np_save_writes(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    assert tarbytes.npy(array) == buffer.getvalue()


def test_a_strided_array_is_written_in_c_order_with_its_values():
    array = np.arange(20, dtype=np.int16).reshape(4, 5).T  # Fortran-contiguous view
    loaded = np.load(io.BytesIO(tarbytes.npy(array)))
    assert loaded.flags.c_contiguous and np.array_equal(loaded, array) and loaded.dtype == array.dtype
