"""Catalogue-scale batch classification (``skulens classify-batch``): millions of listing photos
into a Parquet dataset, in this process or on a Ray cluster, resumable after any crash.

    from skulens.batch import BatchConfig, run_batch
    summary = run_batch(BatchConfig(model="m.int8.onnx", input="photos/", output="results/"))
    summary = run_batch(BatchConfig(..., ray="auto", workers=8))   # Ray Data, one model per actor

Needs ``pip install 'skulens[batch]'`` (pyarrow) and, for ``ray``, ``'skulens[ray]'``. Only
:class:`BatchConfig` and :class:`BatchError` are imported eagerly; the rest is loaded when used,
and a missing dependency raises MissingExtraError naming the extra.
"""
from .._errors import lazy_exports
from .config import BatchConfig, BatchError

__all__ = ["BatchConfig", "BatchError", "run_batch", "BatchSummary", "summarize"]
__getattr__ = lazy_exports(__name__, {"run_batch": "_job", "BatchSummary": "_job", "summarize": "_job"},
                           extra="batch", deps=("pyarrow",))
