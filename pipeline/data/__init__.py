"""Data preparation: the internal Parquet records and the loader; every ingest (synthetic, InsightFace, folders, LFW);
detection and 5-point alignment; cleaning by centre distance; the held-out protocol kinds (heldout/)."""
