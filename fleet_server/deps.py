"""FastAPI dependencies, as ``Annotated`` aliases (the one place they are defined)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from fleet_server.commands import Commands
from fleet_server.context import ServerContext
from fleet_server.rollouts import RolloutController


def get_context(request: Request) -> ServerContext:
    context: ServerContext = request.app.state.context
    return context


def get_session(context: Annotated[ServerContext, Depends(get_context)]) -> Iterator[Session]:
    with Session(context.engine) as session:
        yield session


ContextDep = Annotated[ServerContext, Depends(get_context)]
SessionDep = Annotated[Session, Depends(get_session)]


def get_rollouts(request: Request) -> RolloutController:
    controller: RolloutController = request.app.state.rollouts
    return controller


RolloutsDep = Annotated[RolloutController, Depends(get_rollouts)]


def get_commands(context: Annotated[ServerContext, Depends(get_context)]) -> Commands:
    assert context.commands is not None  # build_context sets it
    return context.commands


CommandsDep = Annotated[Commands, Depends(get_commands)]
