"""The Operations page (being built)."""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from api.console.web import Console, Viewer
from api.errors import error_responses


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])

    @router.get(
        "/console/operations",
        response_class=HTMLResponse,
        responses={
            303: {"description": "not signed in: to the sign-in page"},
            **error_responses(html=(403,)),
        },
    )
    async def page(request: Request, _viewer: Viewer = Depends(console.allowed("operations"))):
        return console.render(request, "placeholder.html", heading="Operations")

    return router
