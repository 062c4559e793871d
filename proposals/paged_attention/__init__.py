"""Paged attention: research note, standard-op form, PagedAttention function-op draft,
linear-cache to paged rewrite, memory simulator and bench."""
