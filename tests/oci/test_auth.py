"""The registry challenge flow: in-process against a scripted registry, then against real registries."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs

import httpx
import pytest

from devserver.errors import AuthError, RegistryError
from devserver.oci.auth import RegistryAuth, parse_challenges, request_scope
from devserver.oci.credentials import Credentials
from devserver.oci.tls import tls_context
from tests.support.auth_fixtures import *  # noqa: F403  (fixtures)
from tests.support.auth_registries import TLSRegistryProcess, upload_blob
from tests.support.registry import RegistryProcess
from tests.support.tls import TestPKI
from tests.support.token_service import TokenService

HOST = "reg.example"
REALM = "https://auth.example/token"
ALICE = Credentials("alice", "secret", source="test")

# -- parsing -----------------------------------------------------------------------------------


def test_parse_bearer_challenge_with_commas_inside_quotes() -> None:
    value = 'Bearer realm="https://a/token",service="reg",scope="repository:x/y:pull,push",error="insufficient_scope"'
    [challenge] = parse_challenges([value])
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://a/token",
        "service": "reg",
        "scope": "repository:x/y:pull,push",
        "error": "insufficient_scope",
    }


def test_parse_several_challenges_and_escapes() -> None:
    challenges = parse_challenges(['Basic realm="a \\"quoted\\" realm"', "Bearer realm=https://t, service=s"])
    assert [(c.scheme, c.params) for c in challenges] == [
        ("basic", {"realm": 'a "quoted" realm'}),
        ("bearer", {"realm": "https://t", "service": "s"}),
    ]


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/v2/", ""),
        ("GET", "/v2/org/model/manifests/v1", "repository:org/model:pull"),
        ("HEAD", "/v2/m/blobs/sha256:ab", "repository:m:pull"),
        ("POST", "/v2/org/model/blobs/uploads/", "repository:org/model:pull,push"),
        ("PUT", "/v2/org/model/blobs/uploads/u-1?_state=x&digest=sha256:ab", "repository:org/model:pull,push"),
        ("DELETE", "/v2/a/b/c/manifests/sha256:ab", "repository:a/b/c:delete"),
    ],
)
def test_request_scope(method: str, path: str, scope: str) -> None:
    assert request_scope(httpx.Request(method, f"https://{HOST}{path}")) == scope


# -- the flow against a scripted registry ------------------------------------------------------


class FakeRegistry:
    """A registry + token service in one MockTransport: tokens are "USER|repo=actions;…"."""

    def __init__(self, *, basic: bool = False, users: dict[str, tuple[str, set[str]]] | None = None) -> None:
        self.basic = basic
        self.users = users or {"alice": ("secret", {"pull", "push"}), "reader": ("readonly", {"pull"})}
        self.token_requests: list[httpx.Request] = []
        self.registry_requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return self._token(request)
        self.registry_requests.append(request)
        needed = request_scope(request)
        if self._allowed(request.headers.get("Authorization", ""), needed):
            return httpx.Response(202 if request.method == "POST" else 200, headers={"Location": "/up?_state=s"})
        if self.basic:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
        scope = f',scope="{needed}"' if needed else ""
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="fake"{scope}'})

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        if request.method == "POST":
            form = parse_qs(request.content.decode())
            if form.get("refresh_token") != ["idt"]:
                return httpx.Response(401)
            user, scopes = "alice", form.get("scope", [""])[0].split()
        else:
            user, scopes = self._user(request.headers.get("Authorization", "")), request.url.params.get_list("scope")
            if user is None:
                return httpx.Response(401)
        rights = self.users[user][1] if user else set()
        granted = []
        for scope in scopes:
            _, name, actions = scope.split(":")
            granted.append(f"{name}={','.join(sorted(set(actions.split(',')) & rights))}")
        return httpx.Response(200, json={"token": f"{user}|{';'.join(granted)}", "expires_in": 300})

    def _user(self, authorization: str) -> str | None:
        if not authorization:
            return ""
        user, _, password = base64.b64decode(authorization.removeprefix("Basic ")).decode().partition(":")
        return user if self.users.get(user, ("",))[0] == password else None

    def _allowed(self, authorization: str, needed: str) -> bool:
        if self.basic:
            return self._user(authorization) not in (None, "")
        if not authorization.startswith("Bearer "):
            return False
        if not needed:
            return True
        _, name, actions = needed.split(":")
        granted = dict(item.split("=") for item in authorization.split("|", 1)[1].split(";") if item)
        return set(actions.split(",")) <= set(granted.get(name, "").split(","))


class StreamingTransport(httpx.BaseTransport):
    """Like MockTransport, but a streamed body is iterated as the real transport does: once, not replayable."""

    def __init__(self, fake: FakeRegistry) -> None:
        self.fake = fake

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if isinstance(request.stream, httpx.ByteStream):
            request.read()
        else:
            b"".join(request.stream)  # type: ignore[arg-type]
        return self.fake(request)


def _client(fake: FakeRegistry, credentials: Credentials | None = ALICE) -> httpx.Client:
    auth = RegistryAuth(HOST, credentials)
    return httpx.Client(base_url=f"https://{HOST}", transport=StreamingTransport(fake), auth=auth)


def _token_scopes(fake: FakeRegistry) -> list[list[str]]:
    return [r.url.params.get_list("scope") for r in fake.token_requests]


def test_tokens_are_cached_per_scope_and_push_asks_again() -> None:
    fake = FakeRegistry()
    with _client(fake) as client:
        assert client.get("/v2/m/manifests/v1").status_code == 200
        assert client.get("/v2/m/blobs/sha256:aa").status_code == 200  # the pull token is reused
        assert client.post("/v2/m/blobs/uploads/").status_code == 202  # a pull token must not serve a POST
        assert client.put("/v2/m/blobs/uploads/u?_state=s&digest=sha256:aa", content=b"x").status_code == 200
        assert client.head("/v2/m/blobs/sha256:aa").status_code == 200  # pull,push covers pull
        assert client.get("/v2/other/manifests/v1").status_code == 200  # another repository, another token
    assert _token_scopes(fake) == [["repository:m:pull"], ["repository:m:pull,push"], ["repository:other:pull"]]
    assert fake.token_requests[0].headers["Authorization"] == "Basic " + base64.b64encode(b"alice:secret").decode()
    # 3 challenges answered by a retry, 3 requests authorised up front
    assert len(fake.registry_requests) == 9


def test_streamed_upload_body_is_sent_once_with_the_cached_push_token() -> None:
    fake = FakeRegistry()
    with _client(fake) as client:
        client.post("/v2/m/blobs/uploads/")
        put = client.put("/v2/m/blobs/uploads/u?_state=s&digest=sha256:aa", content=iter([b"chunk"]))
    assert put.status_code == 200
    assert fake.registry_requests[-1].headers["Authorization"].startswith("Bearer alice|m=pull,push")


def test_streamed_body_that_meets_a_challenge_gets_a_clear_error() -> None:
    fake = FakeRegistry()
    with _client(fake) as client, pytest.raises(RegistryError, match="during a streamed upload"):
        client.put("/v2/m/blobs/uploads/u?_state=s&digest=sha256:aa", content=iter([b"chunk"]))


def test_anonymous_token_when_there_are_no_credentials() -> None:
    fake = FakeRegistry()
    with _client(fake, credentials=None) as client:
        assert client.get("/v2/").status_code == 200
        with pytest.raises(AuthError, match=r"reg\.example requires a login") as caught:
            client.get("/v2/m/manifests/v1")
    assert "Authorization" not in fake.token_requests[0].headers
    assert caught.value.one_line().endswith("(run `kit-dev login reg.example`)")


def test_wrong_password_names_host_source_and_fix() -> None:
    fake = FakeRegistry()
    wrong = Credentials("alice", "nope", source="~/.docker/config.json")
    with _client(fake, wrong) as client, pytest.raises(AuthError) as caught:
        client.get("/v2/m/manifests/v1")
    line = caught.value.one_line()
    assert "reg.example rejected the credentials from ~/.docker/config.json" in line
    assert "run `kit-dev login reg.example`" in line


def test_insufficient_scope_on_push_says_so() -> None:
    fake = FakeRegistry()
    with _client(fake, Credentials("reader", "readonly", source="test")) as client:
        assert client.get("/v2/m/manifests/v1").status_code == 200
        with pytest.raises(AuthError, match=r"denied repository:m:pull,push to reader") as caught:
            client.post("/v2/m/blobs/uploads/")
    assert "may push" in caught.value.one_line()


def test_identity_token_uses_the_oauth2_refresh_grant() -> None:
    fake = FakeRegistry()
    with _client(fake, Credentials(identity_token="idt", source="helper")) as client:
        assert client.get("/v2/m/manifests/v1").status_code == 200
    [token_request] = fake.token_requests
    assert token_request.method == "POST"
    form = parse_qs(token_request.content.decode())
    assert form["grant_type"] == ["refresh_token"] and form["scope"] == ["repository:m:pull"]
    assert form["service"] == ["fake"] and form["client_id"] == ["kit-dev"]


def test_basic_is_sent_up_front_once_the_host_asked_for_it() -> None:
    fake = FakeRegistry(basic=True)
    with _client(fake) as client:
        assert client.get("/v2/").status_code == 200
        assert client.put("/v2/m/blobs/uploads/u?_state=s", content=iter([b"chunk"])).status_code == 200
    assert len(fake.registry_requests) == 3 and not fake.token_requests


def test_basic_without_credentials_or_with_wrong_ones_fails_clearly() -> None:
    with _client(FakeRegistry(basic=True), None) as client, pytest.raises(AuthError, match="requires a user name"):
        client.get("/v2/")
    wrong = Credentials("alice", "nope", source="test")
    with _client(FakeRegistry(basic=True), wrong) as client, pytest.raises(AuthError, match="denied access to alice"):
        client.get("/v2/")


def test_unusable_token_replies_are_registry_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"expires_in": 60})
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="s"'})

    auth = RegistryAuth(HOST, ALICE)
    with (
        httpx.Client(transport=httpx.MockTransport(handler), auth=auth) as client,
        pytest.raises(RegistryError, match="sent no token"),
    ):
        client.get(f"https://{HOST}/v2/")


def test_async_client_works_too() -> None:
    import asyncio

    fake = FakeRegistry()

    async def main() -> int:
        transport = httpx.MockTransport(fake)
        async with httpx.AsyncClient(
            base_url=f"https://{HOST}", transport=transport, auth=RegistryAuth(HOST, ALICE)
        ) as c:
            return (await c.get("/v2/m/manifests/v1")).status_code

    assert asyncio.run(main()) == 200


# -- real registries ---------------------------------------------------------------------------

BLOB = b"kit-dev auth test blob " * 100


def _roundtrip(client: httpx.Client, repository: str) -> None:
    assert client.get("/v2/").status_code == 200
    digest = upload_blob(client, repository, BLOB, stream=True)
    got = client.get(f"/v2/{repository}/blobs/{digest}")
    assert got.status_code == 200 and got.content == BLOB


@pytest.mark.slow
def test_htpasswd_tls_registry_push_and_pull(htpasswd_tls_registry: TLSRegistryProcess, pki: TestPKI) -> None:
    registry = htpasswd_tls_registry
    verify = tls_context(ca_files=[pki.ca_cert])
    with httpx.Client(base_url=registry.url, verify=verify, auth=RegistryAuth(registry.host, ALICE)) as client:
        _roundtrip(client, "auth/basic")


@pytest.mark.slow
@pytest.mark.parametrize("credentials", [None, Credentials("alice", "wrong", source="test")], ids=["none", "wrong"])
def test_htpasswd_tls_registry_refuses(
    htpasswd_tls_registry: TLSRegistryProcess,
    pki: TestPKI,
    credentials: Credentials | None,
) -> None:
    registry = htpasswd_tls_registry
    verify = tls_context(ca_files=[pki.ca_cert])
    auth = RegistryAuth(registry.host, credentials)
    with httpx.Client(base_url=registry.url, verify=verify, auth=auth) as client, pytest.raises(AuthError) as caught:
        client.get("/v2/auth/basic/tags/list")
    assert f"registry {registry.host} " in caught.value.one_line()
    assert f"(run `kit-dev login {registry.host}`" in caught.value.one_line()


@pytest.mark.slow
def test_token_registry_push_and_pull(token_registry: RegistryProcess, token_service: TokenService) -> None:
    before = len(token_service.requests)
    with httpx.Client(base_url=token_registry.url, auth=RegistryAuth(token_registry.host, ALICE)) as client:
        _roundtrip(client, "auth/token")
    asked = [
        (r.user, [_sorted_actions(scope) for scope in r.scopes], r.status) for r in token_service.requests[before:]
    ]
    # GET /v2/ needs any token; the POST's challenge asks for pull+push (in either order), and that token then
    # serves the streamed PUT and the blob GET up front: no third token, no second copy of the body
    assert asked == [("alice", [], 200), ("alice", ["repository:auth/token:pull,push"], 200)]


def _sorted_actions(scope: str) -> str:
    resource, _, actions = scope.rpartition(":")
    return f"{resource}:{','.join(sorted(actions.split(',')))}"


@pytest.mark.slow
def test_token_registry_reader_pulls_but_cannot_push(token_registry: RegistryProcess) -> None:
    with httpx.Client(base_url=token_registry.url, auth=RegistryAuth(token_registry.host, ALICE)) as client:
        digest = upload_blob(client, "auth/shared", BLOB)
    reader = Credentials("reader", "readonly", source="test")
    with httpx.Client(base_url=token_registry.url, auth=RegistryAuth(token_registry.host, reader)) as client:
        assert client.get(f"/v2/auth/shared/blobs/{digest}").content == BLOB
        with pytest.raises(AuthError, match="insufficient_scope"):
            client.post("/v2/auth/shared/blobs/uploads/")


@pytest.mark.slow
def test_token_registry_identity_token(token_registry: RegistryProcess) -> None:
    credentials = Credentials(identity_token="refresh-alice-1234", source="test")
    with httpx.Client(base_url=token_registry.url, auth=RegistryAuth(token_registry.host, credentials)) as client:
        _roundtrip(client, "auth/identity")


@pytest.mark.slow
@pytest.mark.parametrize("credentials", [None, Credentials("alice", "wrong", source="test")], ids=["none", "wrong"])
def test_token_registry_refuses(token_registry: RegistryProcess, credentials: Credentials | None) -> None:
    auth = RegistryAuth(token_registry.host, credentials)
    with httpx.Client(base_url=token_registry.url, auth=auth) as client, pytest.raises(AuthError) as caught:
        client.get("/v2/auth/token/tags/list")
    assert f"registry {token_registry.host} " in caught.value.one_line()
    assert f"(run `kit-dev login {token_registry.host}`" in caught.value.one_line()
