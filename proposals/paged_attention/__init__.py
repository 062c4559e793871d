"""Paged attention: research note, standard-op form, PagedAttention function-op draft,
linear-cache to paged rewrite, memory simulator and bench.

Public API: :func:`to_paged` (the deployment-time rewrite), :func:`paged_model` and
:class:`PagedShape` (one PagedAttention step, as the function op or inlined),
:func:`paged_attention` (the numpy reference) and :data:`SCHEMA` (the op draft).
"""

from proposals.paged_attention.build import PagedShape, paged_model
from proposals.paged_attention.reference import paged_attention
from proposals.paged_attention.rewrite import to_paged
from proposals.paged_attention.spec import SCHEMA

__all__ = ["SCHEMA", "PagedShape", "paged_attention", "paged_model", "to_paged"]
