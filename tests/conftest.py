import pytest

pytest_plugins = ["supervision.testing"]


@pytest.fixture(autouse=True)
def _cleanup_actors(actor_cleanup):
    """Every test of ours stops what it started, and fails if something will not stop."""
    yield
