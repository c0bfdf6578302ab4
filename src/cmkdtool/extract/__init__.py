"""Ingest: media folders, manifests and arrays -> feature tables (``cmkdtool extract``)."""
