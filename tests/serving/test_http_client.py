"""The one HTTP client loop of RemoteModel and HTTPTransport (serving.http_client)."""

from __future__ import annotations

import httpx
import pytest

from veilml.serving.http_client import HTTPClient, RemoteError, RetryPolicy


def _client(answers: list[httpx.Response], policy: RetryPolicy) -> tuple[HTTPClient, list[str]]:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return answers.pop(0) if answers else httpx.Response(200, content=b"ok")

    return HTTPClient("http://service", httpx.Client(transport=httpx.MockTransport(handler)), policy=policy), sent


def test_retried_answers_keep_the_last_status_and_code_unless_the_policy_names_one():
    busy = [httpx.Response(504, json={"detail": "too slow", "code": "run-timeout"}) for _ in range(3)]
    client, sent = _client(list(busy), RetryPolicy(retries=2, backoff=0.0))
    with pytest.raises(RemoteError, match="GET /x failed 3 times .* last with HTTP 504: too slow") as error:
        client.request("GET", "/x", limit=10)
    assert (error.value.status, error.value.code, len(sent), client.retries_done) == (504, "run-timeout", 3, 2)
    client, _ = _client(list(busy), RetryPolicy(retries=2, backoff=0.0, give_up_status=503))
    with pytest.raises(RemoteError) as error:
        client.request("GET", "/x", limit=10)
    assert (error.value.status, error.value.code) == (503, "run-timeout")


def test_a_refusal_is_raised_at_once_and_a_retry_can_succeed():
    client, sent = _client([httpx.Response(403, json={"detail": "no", "code": "forbidden"})], RetryPolicy(backoff=0.0))
    with pytest.raises(RemoteError, match="POST /y: 403: no") as error:
        client.request("POST", "/y", limit=10, content=b"body")
    assert (error.value.status, error.value.code, len(sent)) == (403, "forbidden", 1)
    client, sent = _client([httpx.Response(503, text="busy")], RetryPolicy(backoff=0.0))
    assert client.request("GET", "/z", limit=10) == b"ok" and len(sent) == 2


def test_answers_are_read_up_to_the_limit_and_json_must_be_an_object():
    client, _ = _client([httpx.Response(200, content=b"x" * 11)], RetryPolicy(backoff=0.0))
    with pytest.raises(RemoteError, match="announces 11 bytes, more than the 10 expected"):
        client.request("GET", "/big", limit=10)
    client, _ = _client([httpx.Response(200, json=[1, 2])], RetryPolicy(backoff=0.0))
    with pytest.raises(RemoteError, match="not a JSON object"):
        client.json("GET", "/list")


def test_a_policy_is_non_negative():
    with pytest.raises(ValueError, match="non-negative"):
        RetryPolicy(retries=-1)
