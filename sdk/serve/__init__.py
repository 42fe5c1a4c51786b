"""skulens HTTP service (``skulens serve MODEL``): FastAPI on uvicorn with dynamic micro-batching.

Needs ``pip install 'skulens[serve]'``. Nothing here is imported by ``import skulens``; the web
stack is loaded only when one of these names is used.

    from skulens.serve import ServeConfig, create_app, serve
    serve(ServeConfig(model="mine.int8.onnx", port=8000))
"""
from .._errors import lazy_exports

__all__ = ["ServeConfig", "ServeError", "create_app", "serve", "MicroBatcher", "DecodePool"]
__getattr__ = lazy_exports(__name__, {"ServeConfig": "config", "ServeError": "config", "create_app": "_app",
                                      "serve": "_app", "MicroBatcher": "_batcher", "DecodePool": "_decode_pool"},
                           extra="serve", deps=("fastapi", "starlette", "uvicorn", "pydantic", "multipart", "python_multipart", "anyio"))
