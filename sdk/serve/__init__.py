"""skulens HTTP service (``skulens serve MODEL``): FastAPI on uvicorn with dynamic micro-batching.

Needs ``pip install 'skulens[serve]'``. Nothing here is imported by ``import sdk``; the web
stack is loaded only when one of these names is used.

    from sdk.serve import ServeConfig, create_app, serve
    serve(ServeConfig(model="mine.int8.onnx", port=8000))
"""
from sdk._errors import MissingExtraError

__all__ = ["ServeConfig", "create_app", "serve", "MicroBatcher"]
_WHERE = {"ServeConfig": "config", "create_app": "_app", "serve": "_app", "MicroBatcher": "_batcher"}
_DEPS = ("fastapi", "starlette", "uvicorn", "pydantic", "multipart", "python_multipart", "anyio")


def __getattr__(name):
    import importlib

    if name not in _WHERE:
        raise AttributeError(f"module 'sdk.serve' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"sdk.serve.{_WHERE[name]}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in _DEPS:
            raise MissingExtraError(f"'{exc.name}' is not installed; the HTTP service needs it: "
                                    "pip install 'skulens[serve]'") from exc
        raise
    return getattr(module, name)
