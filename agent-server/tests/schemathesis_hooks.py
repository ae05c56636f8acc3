"""Schemathesis hooks for tests/openapi_conformance.rs (loaded through SCHEMATHESIS_HOOKS).

One rule of POST /schedule's multipart body is stated in the document in words only: every
`file` part's filename is its path under /workspace, and two parts may not name the same path
(the server refuses that with 422, naming the entry). Schemathesis names generated file parts
after their field ("file", "file.png", ...), so a generated list of several files often repeats
a name. Such bodies are left out; every other body is tested, and several input files are
covered by tests/inputs_e2e.rs.
"""

import schemathesis


@schemathesis.hook
def filter_body(context, body):
    files = body.get("file") if isinstance(body, dict) else None
    return not (isinstance(files, list) and len(files) > 1)
