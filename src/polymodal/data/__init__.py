"""Data: documents on disk, the shipped sample, and (later) shards and the built-in corpus."""
