"""The core layer: where files live (cache), seeds/devices/precision (runtime), run sizes (profiles),
the kit's errors, lazy imports and code versions. Imports nothing else from fusionkit."""
