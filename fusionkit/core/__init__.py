"""The core layer: where files live (cache), seeds/devices/precision (runtime), run sizes (profiles),
the kit's errors, lazy imports, code versions and intervals. Imports nothing else from fusionkit."""
