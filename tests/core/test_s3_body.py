"""The 200-with-an-error check that replaces botocore's: the same verdict on every cut."""

from __future__ import annotations

from botocore.handlers import _looks_like_special_case_error

from wiseverify.core.s3 import looks_like_error_body

PAGE = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws'
        b'.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix><KeyCount>1</KeyCount>'
        b'<Contents><Key>p/a&amp;b</Key><Size>3</Size></Contents></ListBucketResult>')


def test_same_verdict_as_botocore_on_every_truncation_and_error():
    bodies = [PAGE[:i] for i in range(1, len(PAGE) + 1)] + [
        PAGE + b"\n  ", b"<ListBucketResult/>", b'<A x="1"/>', b"<A><B/></A>",
        b'<?xml version="1.0"?><Error><Code>InternalError</Code></Error>',
        b"<Error><Code>SlowDown</Code></Error>\n", b"not xml", b"<A>"]
    for body in bodies:
        assert looks_like_error_body(body) == _looks_like_special_case_error(200, body), body


def test_installed_on_a_guarded_client(s3):
    from botocore import handlers

    from wiseverify.core.s3 import _handle_200_error, guard_read_only

    client = s3.client()
    guard_read_only(client)
    emitter = client.meta.events
    chain = list(emitter._emitter._lookup_cache.get("before-parse.s3.ListObjectsV2", [])) or \
        [h for h in emitter._emitter._handlers.prefix_search("before-parse.s3.ListObjectsV2")]
    assert _handle_200_error in chain and handlers._handle_200_error not in chain
    s3.client().create_bucket(Bucket="body-check")  # an unguarded client may write
    s3.client().put_object(Bucket="body-check", Key="a&b <c>", Body=b"x")
    page = client.list_objects_v2(Bucket="body-check")
    assert [o["Key"] for o in page["Contents"]] == ["a&b <c>"]
