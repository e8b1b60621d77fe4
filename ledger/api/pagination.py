from __future__ import annotations

from rest_framework.pagination import CursorPagination


class NewestFirstPagination(CursorPagination):
    """Newest first, by id. A cursor (not page numbers): stable while attacks keep appending
    attempts, and no COUNT(*) over a table that grows by thousands of rows per attack."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
