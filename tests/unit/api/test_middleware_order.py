"""The request layer and the hot path run in front of FastAPI's own outer layers.

That an unhandled error further in is still a 500 OperationOutcome with the request id is
tests/integration/api/test_ops.py's to show.
"""

from __future__ import annotations

from pathlib import Path

from starlette.middleware.errors import ServerErrorMiddleware

from gateway.api.app import create_app
from gateway.api.hot_path import HotPath
from gateway.api.middleware import BodyLimitMiddleware, GZip, RequestMiddleware
from gateway.settings import Settings


def layers(app: object) -> list[type]:
    found = []
    while app is not None and len(found) < 20:
        found.append(type(app))
        app = getattr(app, "app", None)
    return found


def test_searches_meet_the_request_layer_and_hot_path_before_any_of_fastapis_layers(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    stack = layers(app.build_middleware_stack())
    assert stack[:3] == [RequestMiddleware, HotPath, ServerErrorMiddleware]
    # the application's own middleware stays inside FastAPI's, in its order
    assert stack.index(BodyLimitMiddleware) < stack.index(GZip)
    assert stack.index(ServerErrorMiddleware) < stack.index(BodyLimitMiddleware)
