"""Feature hashing: MurmurHash3 x86_32 (scalar via mmh3, batched via numba) and crosses.

Everything here is pure and synchronous. Hashes are deterministic across processes and
machines (MurmurHash3 with explicit seeds, never Python's randomised ``hash()``), so a model
trained in one process can be served by another.

Scheme (Vowpal Wabbit style): a feature ``namespace=value`` hashes as
``murmur3_32(value_utf8, namespace_seed(namespace, seed))`` - the namespace hash is the seed
of the value hash. Cross features combine two feature hashes with :func:`cross_hash`, and
:func:`to_index` maps a hash onto a ``2**bits`` weight table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mmh3
import numpy as np
from numba import njit
from numpy.typing import NDArray

__all__ = [
    "FNV_PRIME",
    "MASK32",
    "HashLike",
    "cross_hash",
    "encode_strings",
    "fmix32",
    "fmix32_scalar",
    "hash_arrow_strings",
    "hash_columns",
    "hash_slices",
    "hash_slices_one_seed",
    "murmur3_32",
    "namespace_seed",
    "to_index",
]

MASK32 = 0xFFFFFFFF

# MurmurHash3_x86_32 constants (Austin Appleby, public domain reference implementation).
# Typed as uint64 so numba never mixes uint64 with int64 (which it would promote to float64);
# all intermediate arithmetic is done in uint64 and masked back to 32 bits.
_M32 = np.uint64(MASK32)
_C1 = np.uint64(0xCC9E2D51)
_C2 = np.uint64(0x1B873593)
_N = np.uint64(0xE6546B64)
_M = np.uint64(5)
_F1 = np.uint64(0x85EBCA6B)
_F2 = np.uint64(0xC2B2AE35)
_S8 = np.uint64(8)
_S13 = np.uint64(13)
_S15 = np.uint64(15)
_S16 = np.uint64(16)
_S17 = np.uint64(17)
_S19 = np.uint64(19)
_S24 = np.uint64(24)
_FNV_PRIME = 0x01000193

# A hash or array of hashes: uint32 (or any integer dtype, reduced mod 2**32).
HashLike = NDArray[Any] | np.integer[Any] | int


def murmur3_32(data: bytes, seed: int) -> int:
    """MurmurHash3 x86_32 of ``data`` as an unsigned int; the C library (mmh3) is the reference."""
    return int(mmh3.hash(data, seed, signed=False))


def namespace_seed(namespace: str, seed: int) -> int:
    """Seed for values of ``namespace``: its MurmurHash3, VW-style (namespace hash seeds values)."""
    return murmur3_32(namespace.encode("utf-8"), seed)


def _check_seed(seed: int) -> None:
    if not 0 <= seed <= MASK32:
        raise ValueError(f"seed must be in [0, 2**32 - 1], got {seed}")


@njit(cache=True, nogil=True, inline="always")
def _rotl32(x: Any, r: Any) -> Any:
    return ((x << r) | (x >> (np.uint64(32) - r))) & _M32


@njit(cache=True, nogil=True, inline="always")
def _mix_k1(k: Any) -> Any:
    k = (k * _C1) & _M32
    k = _rotl32(k, _S15)
    return (k * _C2) & _M32


@njit(cache=True, nogil=True, inline="always")
def _mix_h1(h: Any, k1: Any) -> Any:
    h ^= k1
    h = _rotl32(h, _S13)
    return (h * _M + _N) & _M32


@njit(cache=True, nogil=True, inline="always")
def _fmix32_nb(h: Any) -> Any:
    h ^= h >> _S16
    h = (h * _F1) & _M32
    h ^= h >> _S13
    h = (h * _F2) & _M32
    h ^= h >> _S16
    return h


@njit(cache=True, nogil=True)
def _murmur_slices(data: Any, offsets: Any, seeds: Any, seed_step: Any) -> Any:
    # Slice i uses seeds[i * seed_step]: step 1 = per-slice seeds, step 0 = one shared seed.
    # The whole hash is written out in this loop (scalar helpers only): passing the array to a
    # helper costs an NRT incref/decref per slice, ~30% of the time for short strings.
    n = offsets.shape[0] - 1
    size = data.shape[0]
    out = np.empty(max(n, 0), dtype=np.uint32)
    for i in range(n):
        start = np.int64(offsets[i])
        end = np.int64(offsets[i + 1])
        if start < 0 or end < start or end > size:
            raise ValueError("offsets must be non-decreasing and within data")
        length = end - start
        h = np.uint64(seeds[i * seed_step]) & _M32
        p = start
        body_end = start + (length // 4) * 4
        while p < body_end:  # 4-byte little-endian blocks
            k = (
                np.uint64(data[p])
                | (np.uint64(data[p + 1]) << _S8)
                | (np.uint64(data[p + 2]) << _S16)
                | (np.uint64(data[p + 3]) << _S24)
            )
            h = _mix_h1(h, _mix_k1(k))
            p += 4
        tail = length & 3
        if tail != 0:
            k = np.uint64(0)
            if tail == 3:
                k ^= np.uint64(data[p + 2]) << _S16
            if tail >= 2:
                k ^= np.uint64(data[p + 1]) << _S8
            k ^= np.uint64(data[p])
            h ^= _mix_k1(k)
        # the C code's length is a uint32_t, hence the mask
        out[i] = _fmix32_nb(h ^ (np.uint64(length) & _M32))
    return out


@njit(cache=True, nogil=True)
def _murmur_columns(data: Any, bases: Any, sizes: Any, offsets: Any, seeds: Any) -> Any:
    """Row i of column c is ``data[bases[c] + offsets[c, i] : bases[c] + offsets[c, i + 1]]``
    hashed with ``seeds[c]``; returns (rows, columns)."""
    columns, n = offsets.shape[0], offsets.shape[1] - 1
    out = np.empty((max(n, 0), columns), dtype=np.uint32)
    for c in range(columns):
        column = data[bases[c] : bases[c] + sizes[c]]
        out[:, c] = _murmur_slices(column, offsets[c], seeds[c : c + 1], 0)
    return out


@njit(cache=True, nogil=True)
def hash_slices(data: Any, offsets: Any, seeds: Any) -> Any:
    """MurmurHash3 x86_32 of every ``data[offsets[i]:offsets[i+1]]`` with ``seeds[i]`` (numba).

    ``data`` is 1-D uint8, ``offsets`` int32/int64 of length n+1, ``seeds`` uint32 of length n;
    returns uint32[n], bit-identical to mmh3. Offsets may start above 0 (e.g. Arrow slices).
    Callable from other njit code.
    """
    if offsets.shape[0] != seeds.shape[0] + 1:
        raise ValueError("offsets must have len(seeds) + 1 entries")
    return _murmur_slices(data, offsets, seeds, 1)


def hash_slices_one_seed(
    data: NDArray[np.uint8], offsets: NDArray[np.integer[Any]], seed: int
) -> NDArray[np.uint32]:
    """:func:`hash_slices` with the same seed for every slice (e.g. one namespace's values)."""
    _check_seed(seed)
    if offsets.shape[0] == 0:
        raise ValueError("offsets must have at least one entry (n + 1 for n slices)")
    seeds = np.full(1, seed, dtype=np.uint32)
    result: NDArray[np.uint32] = _murmur_slices(data, offsets, seeds, 0)
    return result


def hash_columns(
    columns: Sequence[tuple[NDArray[np.uint8], NDArray[np.integer[Any]]]], seeds: Sequence[int]
) -> NDArray[np.uint32]:
    """:func:`hash_slices_one_seed` of every (data, offsets) column with its own seed, in
    one kernel call: (rows, columns).  A batch of a few rows and 39 columns cost 39
    calls' overhead, far more than the hashing."""
    if len(columns) != len(seeds):
        raise ValueError(f"{len(columns)} column(s) but {len(seeds)} seed(s)")
    if not columns:
        return np.zeros((0, 0), np.uint32)
    for seed in seeds:
        _check_seed(seed)
    rows = {off.shape[0] for _, off in columns}
    if len(rows) != 1:
        raise ValueError(f"columns of different lengths: {sorted(r - 1 for r in rows)} rows")
    sizes = np.fromiter((data.shape[0] for data, _ in columns), np.int64, len(columns))
    bases = np.zeros(len(columns), np.int64)
    np.cumsum(sizes[:-1], out=bases[1:])
    offsets = np.concatenate([off for _, off in columns], dtype=np.int64, casting="same_kind")
    data = np.concatenate([data for data, _ in columns])
    result: NDArray[np.uint32] = _murmur_columns(
        data, bases, sizes, offsets.reshape(len(columns), -1), np.array(seeds, np.uint32)
    )
    return result


def encode_strings(values: Sequence[str]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """UTF-8 bytes of ``values`` concatenated into one uint8 array plus int64 offsets (n+1).

    One ``join``/``encode`` for all-ASCII input (the common case) so ~1e5 strings cost
    milliseconds; non-ASCII input falls back to encoding each string. Data may be read-only.
    """
    n = len(values)
    offsets = np.zeros(n + 1, dtype=np.int64)
    joined = "".join(values)
    if joined.isascii():
        # ASCII: one byte per character, so character lengths are byte lengths.
        np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=n), out=offsets[1:])
        raw = joined.encode("ascii")
    else:
        encoded = [v.encode("utf-8") for v in values]
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
        raw = b"".join(encoded)
    return np.frombuffer(raw, dtype=np.uint8), offsets


def _hash_arrow_array(arr: Any, seed: int) -> NDArray[np.uint32]:
    import pyarrow as pa

    typ = arr.type
    if pa.types.is_string_view(typ):
        arr, typ = arr.cast(pa.large_string()), pa.large_string()
    elif pa.types.is_binary_view(typ):
        arr, typ = arr.cast(pa.large_binary()), pa.large_binary()
    if pa.types.is_string(typ) or pa.types.is_binary(typ):
        off_dtype: type[np.integer[Any]] = np.int32
    elif pa.types.is_large_string(typ) or pa.types.is_large_binary(typ):
        off_dtype = np.int64
    else:
        raise TypeError(f"hash_arrow_strings needs a string/binary array, got {typ}")
    n = len(arr)
    if n == 0:
        return np.empty(0, dtype=np.uint32)
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=off_dtype)[arr.offset : arr.offset + n + 1]
    if data_buf is None:
        data = np.empty(0, dtype=np.uint8)
    else:
        data = np.frombuffer(data_buf, dtype=np.uint8)
    out = hash_slices_one_seed(data, offsets, seed)
    if arr.null_count:
        # Arrow leaves the bytes behind a null slot undefined: force the empty-string hash.
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        out[nulls] = murmur3_32(b"", seed)
    return out


def hash_arrow_strings(array: Any, seed: int) -> NDArray[np.uint32]:
    """MurmurHash3 x86_32 of every value of a pyarrow string array (nulls hash as ``""``).

    Accepts (Large)StringArray, (Large)BinaryArray or a ChunkedArray of them; reads the Arrow
    offsets/data buffers directly (honouring slice offsets) - no per-value Python loop.
    """
    import pyarrow as pa

    _check_seed(seed)
    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks == 0:
            return np.empty(0, dtype=np.uint32)
        return np.concatenate([_hash_arrow_array(chunk, seed) for chunk in array.chunks])
    return _hash_arrow_array(array, seed)


def fmix32(h: HashLike) -> NDArray[np.uint32]:
    """MurmurHash3's fmix32 finaliser, vectorised: avalanches every input bit (uint32 in/out)."""
    x = np.asarray(h).astype(np.uint64) & np.uint64(MASK32)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x85EBCA6B)) & np.uint64(MASK32)
    x = x ^ (x >> np.uint64(13))
    x = (x * np.uint64(0xC2B2AE35)) & np.uint64(MASK32)
    x = x ^ (x >> np.uint64(16))
    return np.asarray(x, dtype=np.uint32)


FNV_PRIME = _FNV_PRIME
fmix32_scalar = _fmix32_nb
"""fmix32 of one uint64 holding a 32-bit value, callable from other numba kernels:
``cross_hash(a, b) == fmix32_scalar(((a * FNV_PRIME) & MASK32) ^ b)``."""


def cross_hash(a: HashLike, b: HashLike) -> NDArray[np.uint32]:
    """Hash of the cross of two features from their uint32 hashes: fmix32((a * FNV) ^ b).

    Broadcasts, so one user hash (scalar) crosses every catalog item hash in one call.
    Not symmetric: cross_hash(a, b) != cross_hash(b, a) in general.
    """
    ua = np.asarray(a).astype(np.uint64) & np.uint64(MASK32)
    ub = np.asarray(b).astype(np.uint64) & np.uint64(MASK32)
    mixed = ((ua * np.uint64(_FNV_PRIME)) & np.uint64(MASK32)) ^ ub
    return fmix32(mixed)


def to_index(h: HashLike, bits: int) -> NDArray[np.int64]:
    """Weight-table index of hash ``h``: its low ``bits`` bits, as int64 (table size 2**bits)."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    return np.asarray(np.asarray(h).astype(np.int64) & np.int64((1 << bits) - 1), dtype=np.int64)
