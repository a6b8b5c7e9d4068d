"""The SSE decoder: the WHATWG parsing rules, and any split of the bytes into chunks."""

from __future__ import annotations

import random

import pytest

from openbuda.client._sse import ServerSentEvent, SSEDecoder


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def test_an_event_with_id_type_and_data() -> None:
    [event] = decode(b'id: 7\nevent: message\ndata: {"seq": 7}\n\n')
    assert event == ServerSentEvent(data='{"seq": 7}', event="message", id="7", last_event_id="7")


def test_the_type_defaults_to_message_and_data_lines_are_joined() -> None:
    [event] = decode(b"data: one\ndata:two\ndata:  three\n\n")
    assert event.event == "message"
    assert event.data == "one\ntwo\n three"  # one space after the colon is removed, no more
    assert event.id is None


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(ending: bytes) -> None:
    stream = ending.join([b"event: a", b"data: 1", b"", b"event: b", b"data: 2", b"", b""])
    assert [(e.event, e.data) for e in decode(stream)] == [("a", "1"), ("b", "2")]


def test_a_crlf_split_across_chunks_is_one_line_ending() -> None:
    events = decode(b"data: 1\r", b"\n\r", b"\ndata: 2\r\n\r\n")
    assert [e.data for e in events] == ["1", "2"]


def test_a_utf8_character_split_across_chunks() -> None:
    data = "data: héllo ✓\n\n".encode()
    split = data.index("✓".encode()) + 1
    [event] = decode(data[:split], data[split:])
    assert event.data == "héllo ✓"


def test_invalid_utf8_becomes_the_replacement_character() -> None:
    [event] = decode(b"data: a\xffb\n\n")
    assert event.data == "a\ufffdb"


def test_a_byte_order_mark_at_the_start_is_dropped() -> None:
    [event] = decode(b"\xef\xbb\xbfdata: x\n\n")
    assert event.data == "x"


def test_comments_are_counted_never_dispatched() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b": heartbeat\n\n:\n\n") == []
    assert decoder.comments == 2


def test_an_event_without_data_is_not_dispatched_and_its_type_is_forgotten() -> None:
    assert [e.event for e in decode(b"event: lonely\n\ndata: x\n\n")] == ["message"]


def test_the_last_event_id_is_kept_for_events_without_their_own() -> None:
    first, second = decode(b"id: 4\ndata: a\n\ndata: b\n\n")
    assert (first.id, first.last_event_id) == ("4", "4")
    assert (second.id, second.last_event_id) == (None, "4")


def test_an_id_containing_nul_is_ignored() -> None:
    [event] = decode(b"id: 3\x00\ndata: a\n\n")
    assert event.id is None and event.last_event_id == ""


def test_retry_with_digits_only() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"retry: 1500\nretry: soon\ndata: a\n\n")
    assert decoder.retry == 1500


def test_a_field_without_colon_and_unknown_fields() -> None:
    [event] = decode(b"data\nfoo: bar\ndata: x\n\n")
    assert event.data == "\nx"


def test_an_incomplete_event_at_the_end_is_discarded() -> None:
    assert decode(b"data: complete\n\ndata: cut") == [ServerSentEvent("complete")]
    assert decode(b"data: no blank line\n") == []


def test_events_are_returned_by_the_chunk_that_completes_them() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert [e.data for e in decoder.feed(b"\ndata: b\n\nda")] == ["a", "b"]
    assert [e.data for e in decoder.feed(b"ta: c\n\n")] == ["c"]


def test_any_split_into_chunks_gives_the_same_events() -> None:
    stream = (
        b'\xef\xbb\xbf: hi\r\nid: 1\r\nevent: message\r\ndata: {"t": "\xc3\xa9"}\r\n\r\n'
        b'event: text.delta\ndata: {"text": "\xe2\x9c\x93"}\n\n'
        b"retry: 10\rid: 2\rdata: x\rdata: y\r\r: tail\n"
    )
    expected = decode(stream)
    assert [e.data for e in expected] == ['{"t": "é"}', '{"text": "✓"}', "x\ny"]
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 12)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert decode(*chunks) == expected, f"seed {seed}, cuts {cuts}"
