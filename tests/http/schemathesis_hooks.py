"""schemathesis check for tests/http.rs: a 5xx is a failure unless it is one of the mapped
ones (503 UNAVAILABLE, 504 DEADLINE_EXCEEDED: a generated `timeout_ms` of 1 ms may expire), and
every error answer has the one error body."""

import schemathesis


@schemathesis.check
def no_unmapped_server_error(ctx, response, case):
    status = response.status_code
    if status >= 500 and status not in (503, 504):
        raise AssertionError(f"unmapped server error {status}: {response.text[:300]}")
    if status >= 400:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict) or not {"code", "message", "field"} <= set(err):
            raise AssertionError(f"error answer without the error body: {response.text[:300]}")
