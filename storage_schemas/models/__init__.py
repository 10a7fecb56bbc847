"""Model code both sides load: named SAM architectures, the project's open_clip architectures,
checkpoint fetching, class-name text embeddings, and the teachers' FLOP counts."""
