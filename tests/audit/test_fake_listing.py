"""The fake provider's listings, read through the real SDK's async paginators."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from cwlab.fake_openai import FakeOpenAI

KEY = "sk-list"
VERSION = "2025-03-01-preview"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_keys=[KEY, "sk-proj-a"], key_projects={"sk-proj-a": "proj_a"}) as server:
        yield server


def _client(fake: FakeOpenAI, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=fake.openai_base_url, max_retries=0)


def _seed(fake: FakeOpenAI, n: int) -> list[str]:
    ids = [f"file-{i:03d}" for i in range(n)]
    for i, file_id in enumerate(ids):
        fake.add_file(file_id, created_at=1_700_000_000 + i)
    return ids


async def test_files_page_through_every_object_in_order(fake: FakeOpenAI) -> None:
    ids = _seed(fake, 7)
    async with _client(fake) as client:
        seen = [f.id async for f in client.files.list(limit=3, order="asc")]
        newest_first = [f.id async for f in client.files.list(limit=2)]
        first = await client.files.list(limit=3, order="asc")

    assert seen == ids
    assert newest_first == ids[::-1]  # desc is the default, as OpenAI's
    assert [f.id for f in first.data] == ids[:3]
    assert first.has_more is True
    assert first.data[0].created_at == 1_700_000_000
    lists = [r for r in fake.requests() if r.method == "GET"]
    assert len(lists) == 3 + 4 + 1  # 7 objects in pages of 3 and 2, plus one first page
    assert lists[1].query["after"] == "file-002"


async def test_the_raw_page_has_the_apis_shape(fake: FakeOpenAI) -> None:
    _seed(fake, 3)
    async with _client(fake) as client:
        raw = await client.files.with_raw_response.list(limit=2, order="asc")

    body = raw.http_response.json()
    assert body["object"] == "list"
    assert (body["first_id"], body["last_id"], body["has_more"]) == ("file-000", "file-001", True)
    assert raw.headers["x-request-id"].startswith("req_")


async def test_a_cursor_naming_a_deleted_file_keeps_its_place(fake: FakeOpenAI) -> None:
    ids = _seed(fake, 5)
    async with _client(fake) as client:
        first = await client.files.list(limit=2, order="asc")
        await client.files.delete("file-001")  # the cursor object itself goes
        rest = await client.files.list(limit=10, order="asc", after=first.data[-1].id)

    assert [f.id for f in rest.data] == ids[2:]


async def test_purpose_filters_and_limit_is_bounded(fake: FakeOpenAI) -> None:
    fake.add_file("file-a", purpose="assistants")
    fake.add_file("file-b", purpose="batch")
    async with _client(fake) as client:
        batch = [f.id async for f in client.files.list(purpose="batch")]
        with pytest.raises(openai.BadRequestError):
            await client.files.list(limit=10_001)
        with pytest.raises(openai.BadRequestError):
            await client.vector_stores.list(limit=101)

    assert batch == ["file-b"]


async def test_vector_stores_page_and_azure_paths_list_too(fake: FakeOpenAI) -> None:
    for i in range(5):
        fake.add_vector_store(f"vs_{i}", created_at=1_700_000_000 + i)
    async with _client(fake) as client:
        stores = [v.id async for v in client.vector_stores.list(limit=2, order="asc")]
    azure = openai.AsyncAzureOpenAI(
        api_key=KEY, azure_endpoint=fake.azure_endpoint, api_version=VERSION, max_retries=0
    )
    v1 = openai.AsyncOpenAI(api_key=KEY, base_url=f"{fake.url}/openai/v1", max_retries=0)
    async with azure, v1:
        via_azure = [v.id async for v in azure.vector_stores.list(limit=2, order="asc")]
        via_v1 = [f.id async for f in v1.files.list(limit=2, order="asc")]

    assert stores == via_azure == [f"vs_{i}" for i in range(5)]
    assert sorted(via_v1) == sorted(fake.files)
    assert any(r.path == "/openai/vector_stores" and "api-version" in r.query
               for r in fake.requests())  # fmt: skip


async def test_a_project_key_lists_only_its_projects_objects(fake: FakeOpenAI) -> None:
    fake.add_file("file-shared")
    fake.add_file("file-a", project="proj_a")
    fake.add_file("file-b", project="proj_b")
    async with _client(fake, "sk-proj-a") as client:
        seen = sorted([f.id async for f in client.files.list()])

    assert seen == ["file-a", "file-shared"]
