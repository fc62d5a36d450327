"""Partitions for a partitioned reduce: which part a key goes to, and how many parts there are.

A job with ``[reduce] partitions = R`` has R reduce shards. A map task puts
each record in partition ``(mix64(fnv1a64(key)) * R) >> 64`` of its output
(``mix64``: murmur3's 64-bit finalizer, so that every byte of the key moves
the high bits the partition is taken from), written
as the output named ``part-<p, 5 digits>/<name>``; reduce shard p reads part
p of every map output. The hash is the Rust sdk's: a key goes to the same
partition whichever language wrote it.
"""

from __future__ import annotations

from typing import Union

from . import _host

__all__ = ["MAX_PARTITIONS", "fnv1a64", "mix64", "part_name", "partition", "partitions"]

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1
#: The most partitions a job can have (the WIT's ``u32``).
MAX_PARTITIONS = 0xFFFF_FFFF

Key = Union[str, bytes, bytearray, memoryview]


def fnv1a64(data: bytes) -> int:
    """The 64-bit FNV-1a hash of ``data``: for each byte, xor it in, then multiply (mod 2**64)."""
    h, prime, mask = _FNV_OFFSET, _FNV_PRIME, _MASK
    for b in data:
        h = ((h ^ b) * prime) & mask
    return h


def mix64(h: int) -> int:
    """murmur3's 64-bit finalizer (``fmix64``): spreads every bit of ``h`` over the high bits."""
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK
    return h ^ (h >> 33)


def _key_bytes(key: Key) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"a partition key is str or bytes, not {type(key).__name__}")


def _check_partitions(partitions: int) -> int:
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        raise TypeError(f"partitions is an int, not {type(partitions).__name__}")
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be 1 to {MAX_PARTITIONS}, not {partitions}")
    return partitions


def partition(key: Key, partitions: int) -> int:
    """The partition (``0 .. partitions-1``) that ``key`` goes to: ``(mix64(fnv1a64(key)) * partitions) >> 64``.

    A ``str`` key is hashed as its UTF-8 bytes. The same key goes to the same
    partition in every task, run and language (the Rust sdk's ``partition``).
    Raises :class:`ValueError` unless ``1 <= partitions <= 2**32-1``.
    """
    if type(partitions) is not int or not 1 <= partitions <= MAX_PARTITIONS:
        _check_partitions(partitions)  # the error (an int subclass in range passes)
    # fnv1a64, inlined: this runs once per record.
    h, prime, mask = _FNV_OFFSET, _FNV_PRIME, _MASK
    for b in key if type(key) is bytes else _key_bytes(key):
        h = ((h ^ b) * prime) & mask
    return (mix64(h) * partitions) >> 64


def partitions() -> int:
    """How many partitions the job's reduce stage has (``[reduce] partitions``).

    1 when the job has no reduce, and in the reduce task itself. A map task
    writes a partitioned output (:meth:`Outputs.partitioned`) when it is more
    than 1.
    """
    return int(_host.host().partitions())


def part_name(name: str, part: int) -> str:
    """The output that holds partition ``part`` of output ``name``: ``part-00003/counts.tsv``."""
    return f"part-{part:05d}/{name}"
