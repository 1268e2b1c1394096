"""A Docker-style token service for docker-registry 2.8's ``auth.token``, in a thread on loopback.

What 2.8 checks (see shared/notes/test-services.md §1): ES256 signed by a key whose certificate is in
the registry's ``rootcertbundle``, ``kid`` = that key's libtrust key ID, ``iss`` = issuer, ``aud`` =
service as a plain string, integer ``exp``/``nbf``, and an ``access`` list. ``GET /token`` takes Basic
credentials (anonymous gets a token with no access; wrong ones get 401); ``POST /token`` takes the
OAuth2 ``refresh_token`` grant for identity tokens. ``requests`` records what each client asked for.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ISSUER = "kit-dev-test-issuer"
SERVICE = "kit-dev-test-registry"
TTL_S = 300
USERS: dict[str, tuple[str, frozenset[str]]] = {
    "alice": ("secret", frozenset({"pull", "push", "delete"})),
    "reader": ("readonly", frozenset({"pull"})),
}
IDENTITY_TOKENS = {"refresh-alice-1234": "alice"}


def libtrust_kid(public_key: ec.EllipticCurvePublicKey) -> str:
    """docker/libtrust key ID: base32(sha256(DER SubjectPublicKeyInfo)[:30]) in 12 groups of 4."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def make_signer(bundle: Path) -> ec.EllipticCurvePrivateKey:
    """A P-256 key, with its self-signed certificate written to ``bundle`` for ``rootcertbundle``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kit-dev test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key


@dataclass
class TokenRequest:
    """One request the service answered: who asked (``""`` = anonymous), for which scopes, with what."""

    method: str
    user: str
    scopes: list[str]
    status: int


@dataclass
class TokenService:
    """The service; ``start()`` binds a free loopback port, ``stop()`` shuts it down."""

    key: ec.EllipticCurvePrivateKey
    bundle: Path  # the signer's certificate: the registry's rootcertbundle
    users: Mapping[str, tuple[str, frozenset[str]]] = field(default_factory=lambda: USERS)
    identity_tokens: Mapping[str, str] = field(default_factory=lambda: IDENTITY_TOKENS)
    requests: list[TokenRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def start(self) -> TokenService:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="token-service", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def issue(self, user: str, scopes: list[str]) -> str:
        """A signed token granting ``user`` the actions it holds out of those each scope asks for."""
        allowed = self.users[user][1] if user else frozenset()
        access = []
        for scope in scopes:
            kind, rest = scope.split(":", 1)
            name, _, wanted = rest.rpartition(":")
            granted = sorted(a for a in wanted.split(",") if a in allowed)
            if granted:
                access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": SERVICE,
            "exp": now + TTL_S,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": libtrust_kid(self.key.public_key())})

    def answer(self, method: str, query: str, authorization: str, form: str) -> tuple[int, dict[str, Any]]:
        """Status and JSON body for one token request."""
        fields = parse_qs(query if method == "GET" else form)
        scopes = [item for value in fields.get("scope", []) for item in value.split()]
        user = ""
        if method == "POST":
            user = self.identity_tokens.get(fields.get("refresh_token", [""])[0], "")
            if fields.get("grant_type") != ["refresh_token"] or not user:
                return self._record(method, user, scopes, 401, {"details": "bad refresh token"})
        elif authorization.startswith("Basic "):
            name, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if name not in self.users or self.users[name][0] != password:
                return self._record(method, name, scopes, 401, {"details": "bad credentials"})
            user = name
        token = self.issue(user, scopes)
        body = {"token": token, "access_token": token, "expires_in": TTL_S}
        if method == "POST":
            body.pop("token")  # an OAuth2 reply carries access_token only
        return self._record(method, user, scopes, 200, body)

    def _record(
        self, method: str, user: str, scopes: list[str], status: int, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        self.requests.append(TokenRequest(method, user, scopes, status))
        return status, body


def _handler(service: TokenService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet in test output
            pass

        def do_GET(self) -> None:
            self._serve("GET", "")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._serve("POST", self.rfile.read(length).decode())

        def _serve(self, method: str, form: str) -> None:
            url = urlsplit(self.path)
            if url.path != "/token":
                status, body = 404, {"details": "not found"}
            else:
                status, body = service.answer(method, url.query, self.headers.get("Authorization", ""), form)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
