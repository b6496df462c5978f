"""POST /auth/login, POST /auth/refresh, GET /api/v1/me."""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from pulse.cloud.api.deps import principal
from pulse.cloud.auth.accounts import Accounts, TokenPair
from pulse.cloud.auth.oidc_login import COOKIE, OidcLogin
from pulse.cloud.auth.tokens import Principal
from pulse.cloud.errors import AuthError, InvalidError, NotFoundError
from pulse.protocol.errors import Code

router = APIRouter(tags=["auth"])


class LoginIn(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class RefreshIn(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=200)


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


class MeOut(BaseModel):
    subject: str
    tenant_id: uuid.UUID | None
    roles: list[str]
    via: str


def _accounts(request: Request) -> Accounts:
    return request.app.state.accounts  # type: ignore[no-any-return]


def _out(pair: TokenPair) -> TokensOut:
    return TokensOut(
        access_token=pair.access_token, refresh_token=pair.refresh_token, token_type=pair.token_type, expires_in=pair.expires_in
    )


@router.post("/auth/login", response_model=TokensOut, summary="Log in with email and password")
async def login(body: LoginIn, accounts: Annotated[Accounts, Depends(_accounts)]) -> TokensOut:
    return _out(await accounts.login(body.email, body.password))


@router.post("/auth/refresh", response_model=TokensOut, summary="Trade a refresh token for a new pair (the old one is spent)")
async def refresh(body: RefreshIn, accounts: Annotated[Accounts, Depends(_accounts)]) -> TokensOut:
    return _out(await accounts.refresh(body.refresh_token))


@router.post("/auth/logout-all", status_code=204, summary="Sign out everywhere: every session of your account ends")
async def logout_all(p: Annotated[Principal, Depends(principal)], accounts: Annotated[Accounts, Depends(_accounts)]) -> Response:
    if p.via != "local":
        raise InvalidError(Code.API_INVALID, "this account signs in through its identity provider; sign out there")
    await accounts.sign_out_all(uuid.UUID(p.subject))
    return Response(status_code=204)


# --- console sign-in through the configured identity provider (cloud/auth/oidc_login.py) --------


class OidcConfigOut(BaseModel):
    enabled: bool
    label: str


def _oidc(request: Request) -> OidcLogin | None:
    return getattr(request.app.state, "oidc_login", None)


def _redirect_uri(request: Request) -> str:
    configured: str | None = request.app.state.pulse.settings.oidc_redirect_url
    return configured or str(request.url_for("oidc_callback"))


def _console(then: str) -> str:
    return then if then.startswith("/") and not then.startswith("//") else "/"


@router.get("/auth/oidc", response_model=OidcConfigOut, summary="Whether the console offers single sign-on, and its button's label")
async def oidc_config(request: Request) -> OidcConfigOut:
    login = _oidc(request)
    return OidcConfigOut(enabled=login is not None, label=request.app.state.pulse.settings.oidc_login_label)


@router.get("/auth/oidc/start", status_code=302, summary="Start single sign-on: a redirect to the identity provider")
async def oidc_start(request: Request, then: str = "/") -> Response:
    login = _oidc(request)
    if login is None:
        raise NotFoundError("single sign-on (PULSE_OIDC_CLIENT_ID is not set)")
    try:
        url, cookie = await login.start(_redirect_uri(request), then=_console(then))
    except AuthError as exc:
        return RedirectResponse("/app/?" + urllib.parse.urlencode({"sso_error": exc.message}), status_code=302)
    response = RedirectResponse(url, status_code=302)
    secure = request.url.scheme == "https"
    response.set_cookie(COOKIE, cookie, max_age=600, httponly=True, samesite="lax", secure=secure, path="/auth/oidc")
    return response


@router.get("/auth/oidc/callback", name="oidc_callback", status_code=302, summary="Where the identity provider sends the browser back")
async def oidc_callback(
    request: Request,
    accounts: Annotated[Accounts, Depends(_accounts)],
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> Response:
    login = _oidc(request)
    try:
        if login is None:
            raise AuthError(Code.AUTH_OIDC_FAILED, "single sign-on is not configured")
        if error or not code or not state:
            raise AuthError(Code.AUTH_OIDC_FAILED, f"the identity provider said: {error or 'no code'} {error_description or ''}".strip())
        who, then = await login.finish(code=code, state=state, cookie=request.cookies.get(COOKIE))
        pair = await accounts.oidc_sign_in(who)
    except AuthError as exc:
        response = RedirectResponse("/app/?" + urllib.parse.urlencode({"sso_error": exc.message}), status_code=302)
    else:
        # the tokens travel in the fragment: never sent to a server, removed from history by the console
        fragment = urllib.parse.urlencode({"access_token": pair.access_token, "refresh_token": pair.refresh_token, "then": then})
        response = RedirectResponse("/app/signed-in#" + fragment, status_code=302)
    response.delete_cookie(COOKIE, path="/auth/oidc")
    return response


@router.get("/api/v1/me", response_model=MeOut, summary="Who the token says you are")
async def me(p: Annotated[Principal, Depends(principal)]) -> MeOut:
    return MeOut(subject=p.subject, tenant_id=p.tenant_id, roles=sorted(p.roles), via=p.via)
