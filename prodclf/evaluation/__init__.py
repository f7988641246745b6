"""Scoring tags against known labels: ``metrics`` (numpy), ``report`` (Markdown and plots)
and ``job`` (``prodclf evaluate``). Training reuses ``metrics`` and ``report``.
"""
