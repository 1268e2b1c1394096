"""The registry auth challenge flow as an ``httpx.Auth``: Basic, and Docker/OCI bearer tokens.

A registry answers 401 with ``WWW-Authenticate: Basic realm=…`` or ``Bearer realm=…,service=…,
scope=…``. For Bearer we get a token from the realm (GET with ``service`` and ``scope``, Basic
credentials when we have them, anonymous otherwise; an identity token is exchanged with the OAuth2
``refresh_token`` grant) and resend. Tokens are cached per scope, because a push needs
``pull,push``: a token that was issued for ``pull`` is not sent with a POST.

Requests are authorised *before* they are sent whenever we can: Basic once the host asked for it,
and a cached token whose scope covers the scope inferred from the request (method + repository
path, as oras-go does with its scope hints). That matters for uploads: the registry client streams
blob bodies, and a streamed body cannot be sent a second time after a 401.

The token request is yielded through the same ``httpx.Client`` flow, so it uses the client's
transport, TLS context, proxies and timeouts. A 401 that survives the retry raises ``AuthError``
with one line naming the host and the fix.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass

import httpx

from devserver.errors import AuthError, RegistryError
from devserver.oci.credentials import Credentials

__all__ = ["Challenge", "RegistryAuth", "parse_challenges", "request_scope"]

DEFAULT_TOKEN_TTL_S = 60  # the Docker token spec's default when the reply has no expires_in
EXPIRY_MARGIN_S = 10  # drop a token this long before it expires, so an upload does not outlive it
CLIENT_ID = "kit-dev"

_PARAM = re.compile(r'\s*([^\s=,]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*))?\s*,?')
_REPOSITORY_PATH = re.compile(r"^/v2/(?P<name>.+)/(?:blobs|manifests|tags|referrers)/")

_Flow = Generator[tuple[httpx.Request, bool], httpx.Response, None]


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge; ``scheme`` is lower case, ``params`` keys too."""

    scheme: str
    params: dict[str, str]


@dataclass(frozen=True)
class _Token:
    value: str
    scope: str
    expires_at: float


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (several challenges may share one value)."""
    challenges: list[Challenge] = []
    for value in values:
        pos = 0
        while pos < len(value):
            match = _PARAM.match(value, pos)
            if match is None or match.end() == pos:
                break
            pos = match.end()
            name, raw = match.group(1), match.group(2)
            if raw is None:
                challenges.append(Challenge(name.lower(), {}))
            elif challenges:
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                challenges[-1].params[name.lower()] = raw
    return challenges


def request_scope(request: httpx.Request) -> str:
    """The token scope a request needs, from its method and path; "" outside a repository."""
    match = _REPOSITORY_PATH.match(request.url.path)
    if match is None:
        return ""
    method = request.method.upper()
    actions = "pull" if method in ("GET", "HEAD") else "delete" if method == "DELETE" else "pull,push"
    return f"repository:{match['name']}:{actions}"


class RegistryAuth(httpx.Auth):
    """Auth for one registry host; keep one per client so its token cache is reused across requests."""

    def __init__(self, host: str, credentials: Credentials | None = None) -> None:
        self.host = host
        self.credentials = credentials
        self._basic = False  # the host asked for Basic once: send it up front from then on
        self._tokens: dict[str, _Token] = {}

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self._flow(request)
        outgoing, needs_body = next(flow)
        while True:
            response = yield outgoing
            if needs_body:
                response.read()
            try:
                outgoing, needs_body = flow.send(response)
            except StopIteration:
                return

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self._flow(request)
        outgoing, needs_body = next(flow)
        while True:
            response = yield outgoing
            if needs_body:
                await response.aread()
            try:
                outgoing, needs_body = flow.send(response)
            except StopIteration:
                return

    def header_for(self, method: str, url: str) -> str | None:
        """The ``Authorization`` this host already granted for such a request, if any (no network).

        The blob fast path (``devserver.oci.fastget``) sends it; without one it falls back to httpx,
        whose flow answers the challenge and fills the cache for the next blob.
        """
        request = httpx.Request(method, url)
        self._authorize_up_front(request, request_scope(request))
        return request.headers.get("Authorization")

    # -- the flow: yields (request, whether its response body is needed) ---------------------

    def _flow(self, request: httpx.Request) -> _Flow:
        scope = request_scope(request)
        self._authorize_up_front(request, scope)
        sent_basic = request.headers.get("Authorization", "").startswith("Basic ")
        response = yield request, False
        if response.status_code != 401:
            return
        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            token = yield from self._fetch_token(request, bearer)
            request.headers["Authorization"] = f"Bearer {token.value}"
        elif basic is not None and sent_basic:
            raise self._denied(response, scope)
        elif basic is not None:
            request.headers["Authorization"] = self._basic_header()
            self._basic = True
        else:
            return  # a 401 with no challenge we know: the caller maps the status
        if not isinstance(request.stream, httpx.ByteStream):  # a streamed body is gone once sent
            raise RegistryError(
                f"registry {self.host} asked to authenticate during a streamed upload "
                f"({request.method} {request.url.path}); run the command again"
            )
        response = yield request, False
        if response.status_code == 401:
            raise self._denied(response, bearer.params.get("scope", scope) if bearer else scope)

    def _authorize_up_front(self, request: httpx.Request, scope: str) -> None:
        if self._basic:
            request.headers["Authorization"] = self._basic_header()
            return
        now = time.monotonic()
        for key, token in list(self._tokens.items()):
            if token.expires_at <= now:
                self._tokens.pop(key, None)  # another thread may have dropped it already
            elif _covers(token.scope, scope):
                request.headers["Authorization"] = f"Bearer {token.value}"
                return

    def _basic_header(self) -> str:
        creds = self.credentials
        if creds is None or not (creds.username or creds.password):
            what = "an identity token, which Basic auth cannot use" if creds else "no login"
            raise AuthError(
                f"registry {self.host} requires a user name and password; kit-dev has {what}", hint=self._login_hint()
            )
        raw = f"{creds.username}:{creds.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _fetch_token(
        self, request: httpx.Request, challenge: Challenge
    ) -> Generator[tuple[httpx.Request, bool], httpx.Response, _Token]:
        scope = challenge.params.get("scope", "")
        token_request = self._token_request(challenge, request.headers.get("User-Agent"))
        response = yield token_request, True
        realm = challenge.params["realm"]
        if response.status_code in (401, 403):
            if self.credentials is None:
                raise AuthError(
                    f"registry {self.host} requires a login (token service {realm} refused an anonymous token)",
                    hint=self._login_hint(),
                )
            raise AuthError(
                f"registry {self.host} rejected the credentials from {self.credentials.source} "
                f"(token service {realm}: HTTP {response.status_code})",
                hint=self._login_hint(),
            )
        if response.status_code >= 400:
            raise RegistryError(f"token service {realm} of registry {self.host} answered HTTP {response.status_code}")
        try:
            body = response.json()
            value = body.get("token") or body.get("access_token")
            ttl = int(body.get("expires_in") or DEFAULT_TOKEN_TTL_S)
        except (ValueError, AttributeError, TypeError) as exc:
            raise RegistryError(f"token service {realm} of registry {self.host} sent an unreadable reply") from exc
        if not isinstance(value, str) or not value:
            raise RegistryError(f"token service {realm} of registry {self.host} sent no token")
        token = _Token(value, scope, time.monotonic() + ttl - EXPIRY_MARGIN_S)
        self._tokens[_normalize_scope(scope)] = token
        return token

    def _token_request(self, challenge: Challenge, user_agent: str | None) -> httpx.Request:
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise RegistryError(f"registry {self.host} sent a Bearer challenge without a usable realm: {realm!r}")
        service = challenge.params.get("service", "")
        scopes = challenge.params.get("scope", "").split()
        headers = {"User-Agent": user_agent} if user_agent else {}
        creds = self.credentials
        if creds is not None and creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": CLIENT_ID,
                "service": service,
                "scope": " ".join(scopes),
            }
            return httpx.Request("POST", realm, data=form, headers=headers)
        if creds is not None and (creds.username or creds.password):
            headers["Authorization"] = self._basic_header()
        params = [("service", service)] if service else []
        params += [("scope", s) for s in scopes]
        return httpx.Request("GET", httpx.URL(realm).copy_merge_params(params), headers=headers)

    def _denied(self, response: httpx.Response, scope: str) -> AuthError:
        challenge = next(iter(parse_challenges(response.headers.get_list("www-authenticate"))), None)
        error = challenge.params.get("error", "") if challenge else ""
        what = f" {scope}" if scope else ""
        if self.credentials is None:
            return AuthError(f"registry {self.host} requires a login for{what or ' access'}", hint=self._login_hint())
        who = self.credentials.username or "the identity token"
        reason = f" ({error})" if error else ""
        hint = self._login_hint()
        if "push" in scope:
            hint += "; check that the repository exists and that you may push to it"
        return AuthError(
            f"registry {self.host} denied{what or ' access'} to {who} from {self.credentials.source}{reason}", hint=hint
        )

    def _login_hint(self) -> str:
        return f"run `kit-dev login {self.host}`"


def _normalize_scope(scope: str) -> str:
    return " ".join(sorted(_scope_items(scope)))


def _scope_items(scope: str) -> list[str]:
    """``repository:a/b:push,pull`` → ``repository:a/b:pull,push``, one entry per space-separated item."""
    items = []
    for item in scope.split():
        resource, _, actions = item.rpartition(":")
        items.append(f"{resource}:{','.join(sorted(a for a in actions.split(',') if a))}")
    return items


def _covers(granted: str, needed: str) -> bool:
    """Whether a token asked for with scope ``granted`` may serve a request needing ``needed``."""
    have: dict[str, set[str]] = {}
    for item in _scope_items(granted):
        resource, _, actions = item.rpartition(":")
        have.setdefault(resource, set()).update(actions.split(","))
    for item in _scope_items(needed):
        resource, _, actions = item.rpartition(":")
        held = have.get(resource, set())
        if "*" not in held and not set(actions.split(",")) <= held:
            return False
    return True
