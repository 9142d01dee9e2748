#!/usr/bin/env python3
"""A real SMTP server (aiosmtpd) for mesh-notify-smtp's tests.

    python3 smtp_server.py --dir OUT [--mode MODE] [--auth USER:PASSWORD]
                           [--tls-cert CERT.pem --tls-key KEY.pem [--implicit-tls]]
                           [--smtputf8]

Binds 127.0.0.1 on a free port (port 0), prints the port on stdout once it
accepts connections, and runs until its stdin is closed (the test keeps the pipe
open and closes or kills it when done), so it never outlives the test.

Every accepted message is written to OUT as NNNN.eml (the raw bytes received
after DATA) and then NNNN.json ({"mail_from", "rcpt_tos", "auth_login",
"tls", "peer_port"}); the .json is written last, through a rename, so a reader that sees it
also sees the complete .eml. The files exist before the client gets its 250.

How the server answers depends on the mode. --mode sets it for every message;
otherwise the local part of the recipient (or sender) address selects it:

    accept        250 (default)
    tempfail      451 4.3.0 try later              at RCPT
    nouser        550 5.1.1 no such user           at RCPT
    reject-data   554 5.6.0 message refused        at DATA
    spam          550 5.7.1 message refused as spam at DATA
    bad-sender    553 5.1.8 sender address rejected at MAIL (selected by the sender)
    hang          no answer to the end of DATA for 60 s (a stuck server)

With --auth, AUTH PLAIN/LOGIN is required (530 without it); wrong credentials get
aiosmtpd's "535 5.7.8 Authentication credentials invalid". Plaintext AUTH is
allowed on this loopback connection (auth_require_tls=False) unless TLS is on.
With --tls-cert/--tls-key the server offers STARTTLS (and requires it), or speaks
TLS from the first byte with --implicit-tls.
"""

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

MODES = ("accept", "tempfail", "nouser", "reject-data", "spam", "bad-sender", "hang")


def local_part(address):
    return address.rsplit("@", 1)[0].lower()


class Handler:
    def __init__(self, outdir, mode):
        self.outdir = outdir
        self.mode = mode
        self.count = 0

    def mode_for(self, address):
        if self.mode is not None:
            return self.mode
        part = local_part(address)
        return part if part in MODES else "accept"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.mode_for(address) == "bad-sender":
            return "553 5.1.8 sender address rejected"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        mode = self.mode_for(address)
        if mode == "tempfail":
            return "451 4.3.0 try later"
        if mode == "nouser":
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        modes = {self.mode_for(a) for a in envelope.rcpt_tos}
        if "reject-data" in modes:
            return "554 5.6.0 message refused"
        if "spam" in modes:
            return "550 5.7.1 message refused as spam"
        if "hang" in modes:
            await asyncio.sleep(60)
            return "451 4.4.2 timed out"
        self.count += 1
        base = os.path.join(self.outdir, "%04d" % self.count)
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "auth_login": (session.auth_data.login.decode("utf-8", "replace")
                           if isinstance(session.auth_data, LoginPassword) else None),
            # session.ssl after STARTTLS; the transport's ssl_object with implicit TLS.
            "tls": (session.ssl is not None
                    or server.transport.get_extra_info("ssl_object") is not None),
            "peer_port": session.peer[1] if session.peer else None,
        }
        with open(base + ".json.tmp", "w", encoding="utf-8") as f:
            json.dump(meta, f)
        os.replace(base + ".json.tmp", base + ".json")
        return "250 2.0.0 OK queued as %04d" % self.count


class Authenticator:
    def __init__(self, user, password):
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == self.user
              and auth_data.password == self.password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--mode", choices=MODES)
    parser.add_argument("--auth", help="USER:PASSWORD; AUTH becomes mandatory")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--implicit-tls", action="store_true")
    parser.add_argument("--smtputf8", action="store_true", help="advertise SMTPUTF8")
    args = parser.parse_args()
    # Plaintext AUTH on loopback is deliberate here; keep the test output quiet.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    handler = Handler(args.dir, args.mode)
    ctx = None
    if args.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)

    kwargs = dict(hostname="mesh-test-smtp", ident="mesh-notify test SMTP",
                  enable_SMTPUTF8=args.smtputf8)
    if args.auth:
        user, _, password = args.auth.partition(":")
        kwargs.update(authenticator=Authenticator(user, password), auth_required=True,
                      auth_require_tls=ctx is not None)
    if ctx is not None and not args.implicit_tls:
        kwargs.update(tls_context=ctx, require_starttls=True)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, **kwargs),
        host="127.0.0.1",
        port=0,
        ssl=ctx if args.implicit_tls else None,
    )
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    # Run until the test closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    server.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
