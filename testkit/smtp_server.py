#!/usr/bin/env python3
"""A real SMTP server for the notifier's tests (aiosmtpd): STARTTLS required
before MAIL and AUTH, AUTH PLAIN/LOGIN with user `conscope`, password
`password`. Each accepted mail is appended to --out as one JSON line:
{"mail_from", "rcpt_tos", "data", "tls", "user"}. Runs until killed."""

import argparse
import json
import ssl
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler:
    def __init__(self, out):
        self.out = out

    async def handle_DATA(self, server, session, envelope):
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
            "tls": session.ssl is not None,
            "user": session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None,
        }
        with open(self.out, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        return "250 OK queued"


def authenticator(server, session, envelope, mechanism, auth_data):
    if isinstance(auth_data, LoginPassword) and auth_data.login == b"conscope" and auth_data.password == b"password":
        return AuthResult(success=True, auth_data=auth_data)
    return AuthResult(success=False, handled=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    controller = Controller(
        Handler(args.out),
        hostname="127.0.0.1",
        port=args.port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
    )
    controller.start()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
