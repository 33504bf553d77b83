"""core/parts.py: how a file is cut into parts."""

import pytest

from flowengine.core.parts import MAX_PARTS, MIB, MIN_PART_SIZE, part_length, part_plan

DEFAULT = 104_857_600


@pytest.mark.parametrize(
    ("file_size", "plan"),
    [
        (1, (DEFAULT, 1)),
        (DEFAULT, (DEFAULT, 1)),
        (DEFAULT + 1, (DEFAULT, 2)),
        (6_800_000_000, (DEFAULT, 65)),  # the reference's example
        (DEFAULT * MAX_PARTS, (DEFAULT, MAX_PARTS)),
        (DEFAULT * MAX_PARTS + 1, (DEFAULT + MIB, 9901)),  # grown by a whole MiB to stay within 10,000 parts
    ],
)
def test_part_plan(file_size: int, plan: tuple[int, int]):
    assert part_plan(file_size, DEFAULT) == plan
    size, count = plan
    assert count <= MAX_PARTS and (count - 1) * size < file_size <= count * size


def test_parts_are_never_under_s3s_least_size():
    assert part_plan(100 * MIB, 1024) == (MIN_PART_SIZE, 20)


def test_part_lengths_add_up_to_the_file():
    size, count = part_plan(3 * DEFAULT + 7, DEFAULT)
    lengths = [part_length(3 * DEFAULT + 7, size, n) for n in range(1, count + 1)]
    assert lengths == [DEFAULT, DEFAULT, DEFAULT, 7]
