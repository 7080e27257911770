"""Where things are (the checkout, shared/, the conformance corpus) and the external tools a test needs."""

import os
import pathlib
import shutil

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# shared/ lies beside the checkout; a copy of the tests (make mutate's mutants/) looks further up
SHARED = next((p / "shared" for p in REPO.parents if (p / "shared" / "conformance").is_dir()), REPO.parent / "shared")
CONFORMANCE = SHARED / "conformance" / "netflow"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """Path of an external program the test needs: in CI its absence fails, elsewhere it skips."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    if path is None:
        message = f"{name} not installed (run ./scripts/install-debian-deps.sh)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path
