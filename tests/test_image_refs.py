"""Every way a row names an image: paths, file:// URIs, data URIs, http(s) URLs (a local server on
127.0.0.1; nothing else is contacted), OpenAI and Anthropic parts, ms-swift image lists; and the
sentences for references that cannot be read."""

import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import run_cli
from data_helpers import ImageServer, closed_port, data_uri, png, write_jsonl


def turn(content, answer="red"):
    return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]}


@pytest.fixture(autouse=True)
def loopback_is_public(monkeypatch):
    """These tests serve their images from 127.0.0.1, which the address check refuses by default
    (tests/test_hardening_net.py tests that check); in-process, loopback counts as public here."""
    from workbench.data import fetching

    monkeypatch.setattr(fetching, "PUBLIC_FOR_TESTS", {"127.0.0.1"})


def image_part(**part):
    return turn([{"type": "image", **part} if "type" not in part else part, {"type": "text", "text": "Colour?"}])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Images on disk, a home folder for ~, and an http server for the URL forms."""
    root = tmp_path_factory.mktemp("refs")
    png(root / "img" / "a.png")
    png(root / "img" / "my cat.png", 84, 56, (30, 170, 50))
    png(root / "web" / "w.png", 56, 84, (30, 60, 220))
    png(root / "web" / "anthropic.png")
    png(root / "web" / "swift.png")
    png(root / "web" / "openai.png")
    home = root / "home"
    png(home / "pics" / "h.png")
    (root / "web" / "fake.png").write_text("not an image, only text")
    with ImageServer(root / "web") as server:
        yield {"root": root, "server": server, "home": home}


def every_form(world) -> list[dict]:
    """One row per reference form and part shape (messages format), all valid."""
    root, url = world["root"], world["server"].url
    a, cat = root / "img" / "a.png", root / "img" / "my cat.png"
    b64 = data_uri(a).split(",", 1)[1]
    return [
        image_part(image="img/a.png"),  # relative to the dataset's folder
        image_part(image="~/pics/h.png"),
        image_part(image=str(a)),  # absolute
        image_part(image=f"file://{a}"),  # file:///abs (Qwen's README form)
        image_part(image=f"file://localhost{quote(str(cat))}"),  # host localhost, percent-encoded space
        image_part(image=data_uri(a)),  # data:image/png;base64,
        image_part(image=data_uri(a, "image")),  # data:image;base64, (Qwen's README form)
        image_part(image=data_uri(a, None)),  # data:;base64,
        image_part(image=f"{url}/to/w.png"),  # redirected within http
        image_part(url=str(a)),  # transformers' chat-template keys
        image_part(type="image_url", image_url={"url": data_uri(a), "detail": "high"}),  # OpenAI
        image_part(type="image_url", image_url=f"{url}/openai.png"),
        image_part(type="image", source={"type": "base64", "media_type": "image/png", "data": b64}),  # Anthropic
        image_part(type="image", source={"type": "url", "url": f"{url}/anthropic.png"}),
        [{"role": "user", "content": [{"type": "image", "image": "img/a.png"},  # a bare message list
                                      {"type": "text", "text": "Output all text in the image"}]},
         {"role": "assistant", "content": "The text in the image is balabala..."}],
    ]


def swift_every_form(world) -> dict:
    a, url = world["root"] / "img" / "a.png", world["server"].url
    images = ["img/a.png", f"file://{a}", data_uri(a), f"{url}/swift.png", {"path": "img/a.png"},
              {"type": "image_url", "image_url": {"url": data_uri(a, "image")}}]
    return {"messages": [{"role": "user", "content": "<image>" * len(images) + "Colours?"},
                         {"role": "assistant", "content": "red"}], "images": images}


@pytest.fixture
def home_is(world, monkeypatch):
    monkeypatch.setenv("HOME", str(world["home"]))


def test_every_form_is_an_image(world, home_is):
    from workbench.data.validation import check_dataset

    path = write_jsonl(world["root"] / "every.jsonl", every_form(world))
    report = check_dataset(path)
    assert report.problems == [] and report.valid == report.rows == 15 and report.format == "messages"
    assert all(length.visual_tokens for length in report.lengths.values())
    images = [s.images[0] for s in report.samples]
    assert images[0] == images[2] == images[3] == images[9] == str(world["root"] / "img" / "a.png")
    assert images[1] == str(world["home"] / "pics" / "h.png") and images[4].endswith("my cat.png")
    swift = check_dataset(write_jsonl(world["root"] / "swift.jsonl", [swift_every_form(world)]))
    assert swift.problems == [] and swift.lengths[1].visual_tokens == [4] * 6


def test_qwen_readme_messages_verbatim(world, monkeypatch):
    """The three messages of Qwen2-VL's README ("More Usage Tips"), each with an answer; only the
    placeholders are replaced by a real file, URL and base64 image."""
    from workbench.data.validation import check_dataset

    a = world["root"] / "img" / "a.png"
    readme = [
        [{"role": "user", "content": [{"type": "image", "image": "file:///path/to/your/image.jpg"},
                                      {"type": "text", "text": "Describe this image."}]}],
        [{"role": "user", "content": [{"type": "image", "image": "http://path/to/your/image.jpg"},
                                      {"type": "text", "text": "Describe this image."}]}],
        [{"role": "user", "content": [{"type": "image", "image": "data:image;base64,/9j/..."},
                                      {"type": "text", "text": "Describe this image."}]}],
    ]
    real = {"file:///path/to/your/image.jpg": f"file://{a}", "http://path/to/your/image.jpg":
            f"{world['server'].url}/w.png", "data:image;base64,/9j/...": data_uri(a, "image")}
    rows = []
    for messages in readme:
        text = json.dumps(messages)
        for placeholder, value in real.items():
            text = text.replace(placeholder, value)
        rows.append({"messages": json.loads(text) + [{"role": "assistant", "content": "A red square."}]})
    report = check_dataset(write_jsonl(world["root"] / "readme.jsonl", rows))
    assert report.problems == [] and report.valid == 3
    # as written, the local placeholders are problems with a sentence (the URL one would need DNS)
    verbatim = write_jsonl(world["root"] / "readme-verbatim.jsonl",
                           [rows[0] | {"messages": readme[0] + rows[0]["messages"][-1:]},
                            rows[2] | {"messages": readme[2] + rows[2]["messages"][-1:]}])
    reasons = {p.row: p.reason for p in check_dataset(verbatim).problems}
    assert "image file /path/to/your/image.jpg is missing" in reasons[1]
    assert "data:image;base64,/9j/... is not valid base64" in reasons[2]


def test_bad_references_get_a_sentence(world):
    from workbench.data.validation import check_dataset

    a, url = world["root"] / "img" / "a.png", world["server"].url
    text_uri = "data:text/plain;base64," + "aGVsbG8gd29ybGQh" * 4000  # 64 kB of "hello world!"
    rows = [image_part(image="data:image/png;base64,***not base64***" + "A" * 50000),
            image_part(image=text_uri),
            image_part(image=f"{url}/page.html"),
            image_part(image="file://fileserver/share/a.png"),
            image_part(image=f"{url}/missing.png"),
            image_part(image=f"{url}/notes.txt"),
            image_part(image="s3://bucket/a.png"),
            image_part(image=f"{url}/fake.png"),
            image_part(image="data:image/png;base64,"),
            image_part(type="image", source={"type": "file", "file_id": "file_011"}),
            image_part(image=f"{url}/ftp/w.png"),
            {"messages": [{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "x"}],
             "images": [data_uri(world["root"] / "web" / "fake.png")]}]
    report = check_dataset(write_jsonl(world["root"] / "bad.jsonl", rows), format="messages")
    reasons = {p.row: (p.kind, p.reason) for p in report.problems}
    expected = {1: ("image-unreadable", "is not valid base64"), 2: ("image-unreadable", "holds text/plain data, not an image"),
                3: ("image-unreachable", "answers with an HTML page, not an image"),
                4: ("image-reference", "names host 'fileserver': a file:// URI can only name a file on this machine"),
                5: ("image-unreachable", "answered HTTP 404"), 6: ("image-unreachable", "text/plain that is not an image"),
                7: ("image-reference", "uses the s3:// scheme"),
                8: ("image-unreachable", "not an image Pillow can read"),
                9: ("image-unreadable", "holds no data"), 10: ("image-reference", "source of type 'file' is not read"),
                11: ("image-unreachable", "redirect to ftp: refused"), 12: ("image-unreadable", "its bytes are text")}
    for row, (kind, words) in expected.items():
        assert reasons[row][0] == kind and words in reasons[row][1], (row, reasons[row])
    for kind, reason in reasons.values():  # never a whole data URI: a recognisable prefix and its size
        assert len(reason) < 400 and "AAAAAAAAAAAAAAAAAAAA" not in reason and "aGVsbG8gd29ybGQhaGVsbG8gd29y" not in reason
    assert f"{text_uri[:48]}... (48.0 kB data URI)" in reasons[2][1]
    assert not (world["root"] / "img" / "file:").exists()


def test_offline_url_is_a_problem_and_its_host_is_tried_once(world):
    from workbench.data.downloads import Downloads
    from workbench.data.images import ImageHeaders
    from workbench.data.validation import check_dataset

    offline = f"http://127.0.0.1:{closed_port()}"
    rows = [image_part(image=f"{offline}/{i}.png") for i in range(30)] + [image_part(image="img/a.png")]
    path = write_jsonl(world["root"] / "offline.jsonl", rows)
    headers = ImageHeaders(downloads=Downloads())
    report = check_dataset(path, headers=headers)
    assert report.valid == 1 and len(report.problems) == 30
    assert {p.kind for p in report.problems} == {"image-unreachable"}
    first = report.problems[0].reason
    assert f"{offline}/0.png cannot be downloaded" in first and "offline" in first
    assert headers.downloads.fetched == 1  # one connection refused; the other 29 fail at once
    check_dataset(path, headers=headers)
    assert headers.downloads.fetched == 1


def test_url_is_downloaded_once_into_the_cache(world):
    from workbench.data.downloads import Downloads, cache_folder
    from workbench.data.images import ImageHeaders
    from workbench.data.validation import check_dataset

    png(world["root"] / "web" / "once.png", 112, 56)
    url = f"{world['server'].url}/once.png"
    path = write_jsonl(world["root"] / "once.jsonl", [image_part(image=url)] * 5)
    for _ in range(2):  # two checks, each with its own Downloads: the second reads the cache
        report = check_dataset(path, headers=ImageHeaders(downloads=Downloads()))
        assert report.valid == 5 and report.lengths[1].visual_tokens == [8]
    assert world["server"].hits["/once.png"] == 1
    cached = Downloads().cached(url)
    assert cached and cached.parent == cache_folder() and cached.read_bytes() == (world["root"] / "web" / "once.png").read_bytes()


def test_limits_on_size(world, monkeypatch):
    from workbench.data import downloads
    from workbench.data.images import read_image_info

    png(world["root"] / "web" / "big.png", 300, 300, (1, 2, 3))
    monkeypatch.setattr(downloads, "MAX_BYTES", 100)
    info = read_image_info(f"{world['server'].url}/big.png")
    assert info.kind == "image-unreachable" and "answers with more than 100 bytes" in info.error


def test_data_uri_is_decoded_once_per_check(world, monkeypatch):
    from workbench.data import images
    from workbench.data.validation import check_dataset

    calls = []
    real = images.data_uri_bytes
    monkeypatch.setattr(images, "data_uri_bytes", lambda ref: calls.append(1) or real(ref))
    uri = data_uri(world["root"] / "img" / "a.png")
    report = check_dataset(write_jsonl(world["root"] / "same-uri.jsonl", [image_part(image=uri)] * 40))
    assert report.valid == 40 and len(calls) == 1


def test_data_check_cli_on_every_form(world, home_is):
    bad = image_part(image="data:image/png;base64," + "%" * 9000)
    path = write_jsonl(world["root"] / "every-cli.jsonl", every_form(world) + [bad])
    result = run_cli("data", "check", path, "--allow-private-urls")
    out = result.stdout
    assert result.returncode == 1 and "16 rows, 15 valid, 1 with problems" in out, out + result.stderr
    assert "row 16: image data URI data:image/png;base64,%%%" in out and "is not valid base64" in out
    assert "%" * 100 not in out and "Traceback" not in out + result.stderr


def test_pil_images_and_every_form_for_callers_of_the_core(world, home_is):
    from PIL import Image

    from workbench.data.images import load_image, read_image_info, source_label
    from workbench.inference import prompt_sample

    memory = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    assert load_image(memory).getpixel((0, 0)) == (255, 255, 255)  # transparent on white, as qwen-vl-utils does
    assert read_image_info(memory).width == 40 and source_label(memory) == "in-memory image 40x30"
    assert prompt_sample("What?", memory).images == [memory]
    a = world["root"] / "img" / "a.png"
    for ref in (str(a), f"file://{a}", data_uri(a), f"{world['server'].url}/w.png"):
        sample = prompt_sample("What colour?", ref)
        assert sample.turns[0].text.startswith("<image>") and load_image(sample.images[0]).size in ((56, 56), (56, 84))
    with pytest.raises(Exception, match="names host 'elsewhere'"):
        prompt_sample("What?", "file://elsewhere/a.png")
    assert os.path.basename(source_label(str(a))) == "a.png"
    assert source_label(data_uri(a)).startswith("data URI (image/png, ")
    assert "(cached copy " in source_label(f"{world['server'].url}/w.png")
