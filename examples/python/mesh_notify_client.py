#!/usr/bin/env python3
"""A mesh-notify client in plain Python (standard library only).

Two ways to use `mesh-notify serve` from any language:

* the Gotify drop-in: POST /message with a Gotify application token, exactly as
  any Gotify client does (point GOTIFY_URL at mesh-notify serve);
* the native API: POST /v1/notifications with an API key, then follow the
  notification with GET /v1/notifications/{id}.

Usage:
  mesh_notify_client.py gotify URL APP_TOKEN "title" "message"
  mesh_notify_client.py native URL API_KEY recipient-id "title" "body"
"""

import json
import sys
import time
import urllib.error
import urllib.request


def post_json(url, payload, headers):
    req = urllib.request.Request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read().decode("utf-8"))


def get_json(url, headers):
    req = urllib.request.Request(url, headers=headers, method="GET")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read().decode("utf-8"))


def gotify(base, token, title, message):
    """What the seed's Python server does today, unchanged: a Gotify message."""
    status, body = post_json(
        f"{base}/message",
        {"title": title, "message": message, "priority": 5},
        {"X-Gotify-Key": token},
    )
    print(f"gotify: {status} id={body['id']} appid={body['appid']}")
    return body


def native(base, key, recipient, title, body, wait_seconds=10.0):
    """Submit through the native API and wait until it is delivered."""
    auth = {"Authorization": f"Bearer {key}"}
    status, accepted = post_json(
        f"{base}/v1/notifications",
        {"kind": "system", "title": title, "body": body, "recipient": {"id": recipient}},
        {**auth, "Idempotency-Key": f"{recipient}:{title}"},
    )
    print(f"native: {status} id={accepted['id']} status={accepted['status']}")
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        _, st = get_json(f"{base}/v1/notifications/{accepted['id']}", auth)
        if st["status"] != "queued":
            print(f"native: {st['status']} by {st.get('delivered_by', '-')}")
            return st
        time.sleep(0.1)
    raise SystemExit("not delivered in time")


def main(argv):
    if len(argv) != 6 or argv[1] not in ("gotify", "native"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv[1] == "gotify":
            gotify(argv[2].rstrip("/"), argv[3], argv[4], argv[5])
        else:
            st = native(argv[2].rstrip("/"), argv[3], "bob", argv[4], argv[5])
            if st["status"] != "delivered":
                return 1
    except urllib.error.HTTPError as e:
        print(f"error: {e.code} {e.read().decode('utf-8', 'replace')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
