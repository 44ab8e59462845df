"""Integer types bounded to the PostgreSQL column that stores them.

A request field typed :data:`Int4` lands in an ``integer`` column; the HTTP codec refuses a value
outside the column's range with a 422 naming the field, before anything is written. A plain
``int`` is bounded to ``bigint`` by the same codec, so no integer from a client can make
PostgreSQL refuse a write.
"""

from __future__ import annotations

from typing import Annotated

import attrs


@attrs.frozen
class Range:
    """Inclusive bounds; the metadata of an ``Annotated[int, Range(...)]`` field."""

    low: int
    high: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high


INT4 = Range(-(2**31), 2**31 - 1)
BIGINT = Range(-(2**63), 2**63 - 1)

Int4 = Annotated[int, INT4]
