"""The pixel rules both sides must agree on: how bytes are grouped into samples (tar streaming),
decoded, rendered into views, and turned into SAM's inputs; and the image sets both sides read."""
