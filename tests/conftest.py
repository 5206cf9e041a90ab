"""Shared pytest set-up: make the repo root importable and expose the optional ../shared data."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def shared_path(*parts):
    """Path into ../shared, or skip the calling test when that file is absent (e.g. a user's clone)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not present: {path}")
    return path


@pytest.fixture
def uncased_vocab():
    return shared_path("vocab", "bert-base-uncased-vocab.txt")


@pytest.fixture
def static_graph():
    """Paddle's static-graph mode for one test (modules opt in with
    `pytestmark = pytest.mark.usefixtures("static_graph")`), back to dygraph afterwards."""
    import paddle
    paddle.enable_static()
    yield
    paddle.disable_static()
