"""Iterators over a generator that holds a connection: close them, or use them in ``with``.

``EventStream``, ``ExecStream`` and their async twins differ only in what their generator
(``_items``) reads; the iterator and context-manager protocol is written once here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from types import TracebackType
from typing import Generic, Self, TypeVar

__all__ = ["AsyncClosingIterator", "ClosingIterator"]

T = TypeVar("T")


class ClosingIterator(Generic[T]):
    _items: Generator[T]

    def __iter__(self) -> Iterator[T]:
        return self._items

    def __next__(self) -> T:
        return next(self._items)

    def close(self) -> None:
        self._items.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClosingIterator(Generic[T]):
    _items: AsyncGenerator[T]

    def __aiter__(self) -> AsyncIterator[T]:
        return self._items

    async def __anext__(self) -> T:
        return await anext(self._items)

    async def aclose(self) -> None:
        await self._items.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
