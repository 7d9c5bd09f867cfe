"""The server's operations on its database, shared by the REST routers and the dispatcher.

- `lifecycle`: a job's log lines and its end (with its teacher and study cell), cancel, retry;
- `checks`: the request checks that need the database or the runtime limits (422 answers);
- `jobs`, `studies`, `teachers`, `datasets`: create, read and list each resource;
- `dashboards`: a job's metric history and files, a study's dashboard, the paper's Table 6.

A service takes a session and the settings, and never commits: it flushes, and its caller
commits (a router, after storing the Idempotency-Key answer in the same transaction; the
dispatcher, at the end of its `sessions.begin()` block). Errors are `server.errors.NotFound` (404),
`server.errors.Conflict` (409) and `server.schemas.invalid` (422); none of them knows about HTTP
requests, so the dispatcher and scripts call the same functions the API does.
"""
