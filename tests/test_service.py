"""The HTTP service with FastAPI's test client: every endpoint, and every bad request a 4xx answer."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from helpers import served_index

from itm.cli import main
from itm.service.app import create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ITM_CACHE", str(root / "cache"))
        yield TestClient(create_app(served_index(root), max_body_bytes=4096))


def test_health_and_page_and_schema(client):
    assert client.get("/health").json() == {"status": "ok", "images": 5}
    page = client.get("/")
    assert page.status_code == 200 and 'id="query"' in page.text and "fetch(\"/search\"" in page.text
    assert "http" not in page.text.split("<script>")[0].replace("http-equiv", "")  # nothing from a CDN
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/images/{image_id}", "/thumbnails/{image_id}", "/explain", "/health"} <= set(paths)


def test_search_images_thumbnails_and_explain(client):
    response = client.post("/search", json={"text": "a red square", "k": 3})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    first = results[0]
    image = client.get(first["image"])
    assert image.status_code == 200 and len(image.content) > 100
    thumb = client.get(first["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    explained = client.get("/explain", params={"image_id": first["image_id"], "text": "a red square"})
    assert explained.status_code == 200 and explained.content[:4] == b"\x89PNG"
    attention = client.get("/explain", params={"image_id": first["image_id"], "text": "a red dog",
                                               "method": "attention"})
    assert attention.status_code == 200 and attention.content[:4] == b"\x89PNG"
    assert attention.content != client.get("/explain", params={"image_id": first["image_id"],
                                                               "text": "a red dog"}).content
    bad = client.get("/explain", params={"image_id": first["image_id"], "text": "a red dog", "method": "gradcam"})
    assert bad.status_code == 422 and "method" in bad.json()["detail"] and "\n" not in bad.json()["detail"]


@pytest.mark.parametrize("body, status, named", [
    ({"text": "", "k": 3}, 422, "text"),
    ({"text": "x" * 501}, 422, "text"),
    ({"text": "dog", "k": 0}, 422, "k"),
    ({"text": "dog", "k": 101}, 422, "k"),
    ({"text": "dog", "k": "many"}, 422, "k"),
    ({"k": 3}, 422, "text"),
    ({"text": "   "}, 400, "empty text"),
])
def test_bad_searches_are_4xx_with_one_line(client, body, status, named):
    response = client.post("/search", json=body)
    assert response.status_code == status
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and named in detail


@pytest.mark.parametrize("url, status", [
    ("/images/999999", 404), ("/thumbnails/999999", 404), ("/images/abc", 422), ("/images/-1", 404),
    ("/images/..%2F..%2Fetc%2Fpasswd", 404), ("/images/1/../../../etc/passwd", 404),
    ("/thumbnails/%2e%2e%2f%2e%2e%2fetc%2fpasswd", 404),
    ("/explain?image_id=999999&text=dog", 404), ("/explain?image_id=1", 422), ("/explain?image_id=1&text=", 422),
])
def test_unknown_ids_and_paths_never_reach_files(client, url, status):
    response = client.get(url)
    assert response.status_code == status
    assert "root:" not in response.text


def test_bodies_over_the_limit_are_refused(client):
    big = json.dumps({"text": "dog " * 2000})
    assert client.post("/search", content=big, headers={"content-type": "application/json"}).status_code == 413

    def chunks():  # no content-length: counted as it streams in
        for _ in range(10):
            yield b"x" * 1000

    assert client.post("/search", content=chunks(), headers={"content-type": "application/json"}).status_code == 413
    assert client.post("/search", content="not json", headers={"content-type": "application/json"}).status_code == 422


def test_serve_binds_loopback_unless_told(capsys):
    assert main(["serve", "--index", "nowhere", "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_search_by_image_ranks_the_caption_collection(client, tmp_path):
    photo = tmp_path / "query.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 20, 20)).save(photo)
    response = client.post("/search/image", files={"file": ("query.png", photo.read_bytes(), "image/png")},
                           params={"k": 3})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3 and {r["text"] for r in results} <= {"a red square", "a green photo", "a blue dog", "a square"}
    bad = client.post("/search/image", files={"file": ("notes.jpg", b"not an image", "image/jpeg")})
    assert bad.status_code == 400 and "notes.jpg" in bad.json()["detail"]
    assert client.post("/search/image").status_code == 422
