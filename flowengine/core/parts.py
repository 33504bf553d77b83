"""How a file is cut into the parts of a multipart upload: pure arithmetic, S3's limits."""

from __future__ import annotations

MAX_PARTS = 10_000  # S3's most parts in one upload
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's least size of every part but the last
MIB = 1024 * 1024


def part_plan(file_size: int, preferred: int) -> tuple[int, int]:
    """(part_size, part_count) for a file: `preferred`-sized parts, grown (by whole MiB) where that
    would take more than MAX_PARTS; never under MIN_PART_SIZE."""
    size = max(preferred, MIN_PART_SIZE, -(-file_size // MAX_PARTS))
    if size > preferred:
        size = -(-size // MIB) * MIB
    return size, max(1, -(-file_size // size))


def part_length(file_size: int, part_size: int, number: int) -> int:
    """The exact size of part `number` (from 1): `part_size`, the last one what is left."""
    return min(part_size, file_size - (number - 1) * part_size)
