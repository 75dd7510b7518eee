"""Sign in, sign out and "who am I" for the dashboard and any HTTP client."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from bitware.kam.v1 import auth_pb2
from gateway.calls import SESSION_COOKIE, Call, CallDep, reply, upstream_of
from gateway.models import LoginBody
from gateway.schemas import returns

router = APIRouter(prefix="/api/auth", tags=["auth"])


def _anonymous(request: Request) -> Call:
    # Login carries no credential (only the request id), whatever the browser sends along.
    return Call(upstream_of(request), (), request.app.state.settings.peers.rpc_timeout)


@router.post(
    "/login",
    responses=returns(auth_pb2.LoginResponse, "Signed in; also sets the HttpOnly session cookie"),
)
async def login(
    body: LoginBody, request: Request, call: Annotated[Call, Depends(_anonymous)]
) -> JSONResponse:
    """Signs a user in; the session token is returned and set as the `bitware_session` cookie."""
    answer = await call(
        call.up.auth.Login, auth_pb2.LoginRequest(email=body.email, password=body.password)
    )
    response = reply(answer)
    # No max-age: the server's sliding expiry decides how long the session lives.
    response.set_cookie(
        SESSION_COOKIE,
        answer.session_token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout", responses=returns(auth_pb2.LogoutResponse, "Signed out"))
async def logout(call: CallDep) -> JSONResponse:
    """Revokes the caller's session and clears the session cookie."""
    answer = await call(call.up.auth.Logout, auth_pb2.LogoutRequest())
    response = reply(answer)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/me", responses=returns(auth_pb2.AuthenticateResponse, "The caller's principal"))
async def me(call: CallDep) -> JSONResponse:
    """Who the caller is, by whatever credential it sent."""
    return reply(await call(call.up.auth.Authenticate, auth_pb2.AuthenticateRequest()))
