"""Hugging Face <-> megatron-core: the name mapping (``mapping``), checkpoint import (``importer``)
and export (``exporter``), at any TP / PP / EP layout."""
