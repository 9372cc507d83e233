"""The toolkit every provider is built from, so that a fix to the wire, to streaming, to errors,
to waiting or to credentials lands once for every upstream:

- ``client``: one ``httpx.Client`` per connection (timeouts, User-Agent, logging), and
  ``address``: where a connection may point us (SSRF policy);
- ``auth``: ``httpx.Auth`` for static credentials and for client credentials (token cache, one
  re-login on 401), and ``Secrets``, which scrubs them from any text;
- ``errors``: ``Where`` (operation and connection), ``raise_for_response`` (envelope, classifier,
  status classes), bounded error bodies, Retry-After;
- ``jsonpath``, ``rows`` and ``stream``: reading answers as they arrive (by path, arrays of rows
  fast, head-then-replay, delimited text);
- ``waiting``: attempts with pauses and a deadline.
"""
