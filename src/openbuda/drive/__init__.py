"""Drive's machinery: blob stores (``blobs``), the working-copy sync of computers (``sync``),
and memory (``memory``: ``MEMORY.md`` and the ``remember`` tool). The use-cases are in
``openbuda.service.drive``."""
