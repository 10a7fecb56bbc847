"""Why a sample cannot be used: the reasons the errors table records, shared by the pixel rules
(decode) and the jobs (SA-1B annotations), below both so neither imports the store for them."""

from __future__ import annotations

# Reasons a sample lands in the errors table. Stable strings: users group and count by them.
ERROR_REASONS = {
    "truncated": "the image data ends early",
    "empty": "the member has no bytes",
    "not_an_image": "the bytes are not an image format the decoder knows",
    "decompression_bomb": "more pixels than the configured limit",
    "bad_image": "the image decoder failed for another reason (detail says why)",
    "missing_image": "a sample with metadata but no image member",
    "missing_json": "an SA-1B image without its JSON",
    "bad_json": "the annotation JSON does not parse or lacks required fields",
    "no_usable_annotation": "no annotation of the image gives a prompt",
}


class SampleError(Exception):
    """A sample that cannot be used: jobs record it in the errors table with `reason` (a key of
    ERROR_REASONS) and `detail`, and go on. Subclasses say which step refused it."""

    def __init__(self, reason: str, detail: str):
        if reason not in ERROR_REASONS:
            raise ValueError(f"unknown error reason {reason!r}; expected one of {sorted(ERROR_REASONS)}")
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
