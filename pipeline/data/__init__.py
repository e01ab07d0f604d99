"""Data: the internal Parquet records, their readers and writers, and every ingest (synthetic, InsightFace, folders, LFW)."""
