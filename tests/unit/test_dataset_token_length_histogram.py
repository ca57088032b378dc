"""The validation report's token-length histogram: every row counted once, in the bin its length falls in."""

import pytest

from api.datasets.services import _histogram


@pytest.mark.parametrize("lengths", [[4], [1, 2, 3], [5, 5, 5, 7, 9, 100], list(range(3, 500, 7)) + [1000]])
def test_every_row_is_counted_once_in_its_bin(lengths: list[int]) -> None:
    result = _histogram(lengths)
    edges, counts = result["edges"], result["counts"]
    assert len(edges) == len(counts) + 1 and len(counts) <= 20
    assert sum(counts) == len(lengths)
    assert edges[0] == min(lengths) and edges[-1] == max(lengths) + 1
    for i, count in enumerate(counts):
        assert count == sum(edges[i] <= n < edges[i + 1] for n in lengths)


def test_a_long_tail_keeps_the_short_rows_apart() -> None:
    result = _histogram([5, 5, 5, 7, 9, 100])
    assert result["counts"][0] == 5 and result["counts"][-1] == 1
