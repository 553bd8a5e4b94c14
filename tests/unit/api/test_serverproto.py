"""api.serverproto: a response's head leaves with its body in one write; nothing is
reordered, and nothing held outlives the loop turn or a close."""

from __future__ import annotations

import asyncio

from grantkeeper.api.serverproto import HeadHolding


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_head_and_body_of_one_turn_are_one_write() -> None:
    async def go() -> None:
        rec = Recorder()
        t = HeadHolding(rec, asyncio.get_running_loop())
        t.write(HEAD)
        assert rec.writes == []
        t.write(b"{}")
        assert rec.writes == [HEAD + b"{}"]
        t.write(b"more")  # not a head: straight through, after what came before
        assert rec.writes == [HEAD + b"{}", b"more"]

    asyncio.run(go())


def test_a_head_alone_is_written_when_the_turn_ends() -> None:
    async def go() -> None:
        rec = Recorder()
        t = HeadHolding(rec, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0)
        assert rec.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        t.write(HEAD)
        await asyncio.sleep(0)
        t.write(b"{}")  # a body in a later turn follows its head
        assert rec.writes[1:] == [HEAD, b"{}"]

    asyncio.run(go())


def test_close_writes_what_is_held_first_and_a_large_body_is_not_copied() -> None:
    async def go() -> None:
        rec = Recorder()
        t = HeadHolding(rec, asyncio.get_running_loop())
        t.write(HEAD)
        t.close()
        assert rec.writes == [HEAD] and rec.closed
        await asyncio.sleep(0)
        assert rec.writes == [HEAD]  # the end-of-turn flush finds nothing left

        rec2 = Recorder()
        t2 = HeadHolding(rec2, asyncio.get_running_loop())
        big = b"x" * (1 << 20)
        t2.write(HEAD)
        t2.write(big)
        assert rec2.writes == [HEAD, big]

    asyncio.run(go())
