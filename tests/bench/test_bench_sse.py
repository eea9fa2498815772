from rlserve.bench.request import SseParser


def test_events_split_across_chunks_and_crlf():
    p = SseParser()
    assert p.feed(b'data: {"a":') == []
    assert p.feed(b' 1}\r\n') == []
    assert p.feed(b"\r\n") == ['{"a": 1}']
    assert p.feed(b"data: [DONE]\n\ndata: x\n\n") == ["[DONE]", "x"]


def test_comments_multiline_and_other_fields():
    p = SseParser()
    events = p.feed(b": keep-alive\n\nevent: message\nid: 7\ndata: line1\ndata:line2\n\n")
    assert events == ["line1\nline2"]


def test_close_flushes_unterminated_event():
    p = SseParser()
    assert p.feed(b"data: last") == []
    assert p.close() == ["last"]
    assert SseParser().close() == []
