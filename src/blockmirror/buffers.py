"""Buffers that are about to be overwritten in full need not be zeroed.

`bytearray(n)` zero-fills its n bytes; for the large receive, payload and
read buffers of the data path (MiBs per batch) that is pure waste, since
every byte is written (by recv_into, preadv or a copy) before it is read.
`uninitialized(n)` is CPython's own constructor called with no source,
which leaves the contents as malloc returned them. Callers must never read
a byte they have not written."""

from __future__ import annotations

import ctypes


def _allocator():
    try:
        fn = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except AttributeError:  # not CPython
        return bytearray
    fn.restype = ctypes.py_object
    fn.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    return lambda n: fn(None, n)


uninitialized = _allocator()
