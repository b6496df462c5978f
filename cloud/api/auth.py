"""POST /auth/login, POST /auth/refresh, GET /api/v1/me."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from pulse.cloud.api.deps import principal
from pulse.cloud.auth.accounts import Accounts, TokenPair
from pulse.cloud.auth.tokens import Principal
from pulse.cloud.errors import InvalidError
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


@router.get("/api/v1/me", response_model=MeOut, summary="Who the token says you are")
async def me(p: Annotated[Principal, Depends(principal)]) -> MeOut:
    return MeOut(subject=p.subject, tenant_id=p.tenant_id, roles=sorted(p.roles), via=p.via)
