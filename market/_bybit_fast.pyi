# The compiled module's interface (market/_bybit_fast.pyx): for type checkers.
from collections.abc import Container
from typing import Any

def use_ticker_table(table: tuple[tuple[str, str, str], ...]) -> None: ...
def decode_frame(frame: bytes, books: dict[str, Any], wanted: Container[str],
                 category: str) -> tuple[Any, ...] | None: ...
