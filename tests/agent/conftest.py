from __future__ import annotations

import pytest
import trio

from flatrender.embedded import EmbeddedS3
from flatrender.storage import MinioStore
from tests.agent.stub_orchestrator import StubState, create_stub, serve


@pytest.fixture
def contract_conformance() -> None:
    """Not here: these tests talk to stubs of the orchestrator (which answer 5xx, 429 and
    shortcuts on purpose), not to the orchestrator whose answers the contract binds."""


@pytest.fixture
def stub() -> StubState:
    return StubState()


@pytest.fixture
async def stub_url(nursery: trio.Nursery, stub: StubState) -> str:
    return await serve(nursery, create_stub(stub))


@pytest.fixture
def store(s3_server: EmbeddedS3) -> MinioStore:
    return MinioStore(s3_server.s3_config())
