"""The batch record layout: a fetch slices out exactly the suffix IR a naive search would pick."""

from __future__ import annotations

import bisect

from hypothesis import given
from hypothesis import strategies as st

from gnomon.online.records import BatchState, encode_batch_state

feature = st.one_of(
    st.just(([], [])),
    st.just(([None], [b"collapsed"])),
    st.lists(st.integers(-(2**40), 2**40), unique=True, max_size=12)
    .map(sorted)
    .flatmap(
        lambda starts: st.tuples(
            st.just(starts), st.lists(st.binary(max_size=20), min_size=len(starts), max_size=len(starts))
        )
    ),
)


@given(st.lists(feature, max_size=6), st.integers(-(2**41), 2**41))
def test_suffix_is_the_first_start_at_or_after_the_window_start(features: list, start: int) -> None:
    state = BatchState(encode_batch_state(features))
    for index, (starts, blobs) in enumerate(features):
        if starts == [None]:
            assert state.suffix(index, None) == blobs[0]
            continue
        position = bisect.bisect_left(starts, start)
        expected = blobs[position] if position < len(starts) else None
        assert state.suffix(index, start) == expected
