"""The data layer: the offline base models and corpora (assets) and text-classification tasks built from
them or from a user's files (tasks). The bundled entity and fact probes (``*.jsonl``) live here as package data."""
