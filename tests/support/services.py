"""What the session's local servers need: free loopback ports (the Ray nodes), and the
credentials of the S3 server (moto) that conftest's `s3_endpoint` starts."""

from __future__ import annotations

import os
import socket

S3_KEY = "samclip-test-key"
S3_SECRET = "samclip-test-secret-" + os.urandom(6).hex()  # must never reach a log, a store or an output
S3_REGION = "us-east-1"


def s3_environment(endpoint: str) -> dict[str, str]:
    """The environment a process needs to reach the session's S3 server, as a cluster node has its own."""
    return {
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": S3_REGION,
        "AWS_ENDPOINT_URL": endpoint,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
