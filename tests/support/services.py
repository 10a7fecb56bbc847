"""What the session's local servers need: free loopback ports (the Ray nodes), and the
credentials of the S3 server (moto) that conftest's `s3_endpoint` starts."""

from __future__ import annotations

import os
import socket

S3_KEY = "samclip-test-key"
S3_SECRET = "samclip-test-secret-" + os.urandom(6).hex()  # must never reach a log, a store or an output
S3_REGION = "us-east-1"

# AWS_* variables of the environment the test process started in (none where the suite is
# usually run): what `os.environ` holds of them outside the tests that ask for S3.
AMBIENT_AWS = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


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
