"""Model store behaviour offline, with the hub unreachable, and when several models are missing.

Network tests reach only 127.0.0.1: a closed port or a small HTTP server started here.
"""

import dataclasses
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import huggingface_hub
import pytest
from typer.testing import CliRunner

from sam_edit.cli.app import app
from sam_edit.errors import ModelNotCachedError, SameditError
from sam_edit.methods.registry import METHODS
from sam_edit.models import loaders, store, tiny, vocab
from sam_edit.models.registry import MODELS, get_spec

# Runs in a fresh interpreter, so that huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at
# import as it does for a user. Prints {name: {"error", "message", "seconds"}} as JSON.
RESOLVE_SCRIPT = """
import json, sys, time
from sam_edit.errors import SameditError
from sam_edit.models import store
from sam_edit.models.registry import get_spec

results = {}
for name in sys.argv[1:]:
    started = time.perf_counter()
    try:
        store.resolve(get_spec(name))
        results[name] = {"error": None, "message": ""}
    except SameditError as error:
        results[name] = {"error": type(error).__name__, "message": str(error)}
    results[name]["seconds"] = time.perf_counter() - started
print(json.dumps(results))
"""

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture
def closed_port() -> int:
    """A local TCP port with nothing listening: bound to get a free number, then closed."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


@pytest.fixture
def online(monkeypatch):
    """Turn downloads on in this process (huggingface_hub read HF_HUB_OFFLINE=1 at import)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for variable in PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def file_server():
    """An HTTP server on 127.0.0.1 that serves the bytes in `server.files` by path, else 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = server.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.files = {}
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def file_spec(url: str, body: bytes):
    """The `lpips-squeeze` registry entry pointed at `url`, with the size and hash of `body`."""
    return dataclasses.replace(
        get_spec("lpips-squeeze"), url=url, size=len(body), sha256=hashlib.sha256(body).hexdigest()
    )


# Hub unreachable -------------------------------------------------------------------------------


def test_unreachable_hub_fails_fast(closed_port, tmp_path):
    env = {key: value for key, value in os.environ.items()
           if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_ETAG_TIMEOUT", *PROXY_VARIABLES)}
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port}",
        NO_PROXY="127.0.0.1",
        HF_HOME=str(tmp_path / "hf-home"),
        SAMEDIT_CACHE_DIR=str(tmp_path / "cache"),
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    names = ["sd14", "iclight-fc"]  # a snapshot and a single file: two code paths in the hub client
    result = subprocess.run([sys.executable, "-c", RESOLVE_SCRIPT, *names], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    for name in names:
        outcome = outcomes[name]
        message = outcome["message"]
        assert outcome["error"] == "ModelDownloadError", outcome
        assert f"download of model `{name}`" in message
        assert get_spec(name).repo_id in message
        assert f"http://127.0.0.1:{closed_port} failed" in message
        assert "connect to the network" in message
        assert f"run `samedit models pull {name}` on a connected machine" in message
        assert str(tmp_path / "hf-home" / "hub") in message
        assert "HF_HUB_OFFLINE=1" in message
        assert "\n" not in message
        # The hub client alone retries for 23 s (measured) before it raises.
        assert outcome["seconds"] < 5, outcome


def test_unreachable_file_host_fails_fast(online, closed_port, cache_root):
    spec = file_spec(f"http://127.0.0.1:{closed_port}/{get_spec('lpips-squeeze').filename}", b"weights")
    started = time.perf_counter()
    with pytest.raises(store.ModelDownloadError) as raised:
        store.pull(spec)
    assert time.perf_counter() - started < 5
    message = str(raised.value)
    assert f"from http://127.0.0.1:{closed_port} failed" in message
    assert "run `samedit models pull lpips-squeeze` on a connected machine" in message
    assert str(cache_root / "files") in message
    assert "\n" not in message
    assert list((cache_root / "files").glob("*.part")) == []


def test_download_error_is_model_not_cached():
    # `samedit bench` stops on ModelNotCachedError, so a failed download stops it too.
    assert issubclass(store.ModelDownloadError, ModelNotCachedError)


def test_file_download_http_error(online, file_server):
    spec = file_spec(f"{file_server.url}/absent.pth", b"weights")
    with pytest.raises(store.ModelDownloadError) as raised:
        store.pull(spec)
    message = str(raised.value)
    assert "HTTPError: HTTP Error 404" in message
    assert "check that the repo or URL exists" in message


def test_file_download_checks_and_renames(online, file_server, cache_root):
    body = b"squeezenet weights"
    spec = file_spec(f"{file_server.url}/weights.pth", body)
    file_server.files["/weights.pth"] = body
    path = store.pull(spec)
    try:
        assert path == store.file_path(spec)
        assert path.read_bytes() == body
        assert store.pull(spec) == path  # cached: no second download
    finally:
        path.unlink()


def test_corrupt_file_download_is_not_kept(online, file_server, cache_root):
    spec = file_spec(f"{file_server.url}/weights.pth", b"expected bytes")
    file_server.files["/weights.pth"] = b"other bytes!!!"  # same size, other hash
    with pytest.raises(SameditError, match="is corrupt"):
        store.pull(spec)
    assert not store.file_path(spec).exists()
    assert list((cache_root / "files").glob("*.part")) == []


def test_hub_check_timeout_default():
    assert store.hub_check_timeout() == store.HUB_CHECK_TIMEOUT


def test_hub_check_timeout_from_environment(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_ETAG_TIMEOUT", 42)
    assert store.hub_check_timeout() == 42


# Downloads off ---------------------------------------------------------------------------------


def test_offline_pull_suggests_unset(cache_root):
    with pytest.raises(ModelNotCachedError) as raised:
        store.pull(get_spec("sd14"))
    message = str(raised.value)
    assert "unset HF_HUB_OFFLINE and rerun `samedit models pull sd14`" in message
    assert "CompVis/stable-diffusion-v1-4@133a221" in message
    assert "\n" not in message


def test_cli_offline_pull_suggests_unset():
    result = CliRunner().invoke(app, ["models", "pull", "sd14"], prog_name="samedit")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "unset HF_HUB_OFFLINE" in lines[0]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE"),
        ({"HF_HUB_OFFLINE": "true"}, "HF_HUB_OFFLINE"),
        ({"TRANSFORMERS_OFFLINE": "YES"}, "TRANSFORMERS_OFFLINE"),
        ({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"}, None),  # the first one set decides
        ({}, None),
    ],
)
def test_offline_variable(online, monkeypatch, variables, expected):
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    assert store.offline_variable() == expected


def test_offline_variable_read_at_import(online, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert store.offline_variable() == "HF_HUB_OFFLINE"


# Several models missing ------------------------------------------------------------------------


def test_require_names_every_missing_model():
    names = ["sd15", "controlnet-seg", "sam-vit-b", "clip-l14"]
    with pytest.raises(ModelNotCachedError) as raised:
        loaders.require_models(names, "default")
    message = str(raised.value)
    for name in names:
        assert f"`{name}` ({store.source_of(get_spec(name))})" in message
    assert "model `sd15`" in message
    assert "is not cached" in message
    assert "run `samedit models pull sd15 controlnet-seg sam-vit-b clip-l14`" in message
    assert "\n" not in message


def test_require_skips_cached_models(cached_sam_checkpoint):
    with pytest.raises(ModelNotCachedError) as raised:
        loaders.require_models(["sam-vit-b", "sd14", "sd14"], "default")
    message = str(raised.value)
    assert "`samedit models pull sd14`" in message
    assert "`sam-vit-b`" not in message


def test_require_cached_returns_paths(cached_sam_checkpoint):
    spec = get_spec("sam-vit-b")
    assert store.require([spec, spec]) == [cached_sam_checkpoint, cached_sam_checkpoint]


@pytest.mark.parametrize("model_set", ["tiny", "random-full"])
def test_require_built_sets_never_missing(model_set, tmp_path, monkeypatch):
    # An empty cache of its own: other tests in this worker build tiny models in the shared one.
    monkeypatch.setenv("SAMEDIT_CACHE_DIR", str(tmp_path))
    loaders.require_models(list(MODELS), model_set)
    assert not (tmp_path / "tiny" / "sd15-inpaint").exists()  # checking builds nothing


def test_iclight_offline_names_base_and_offsets(cpu):
    with pytest.raises(ModelNotCachedError) as raised:
        loaders.load_iclight("default", cpu)
    assert "samedit models pull iclight-base iclight-fc" in str(raised.value)


def test_score_models_offline_names_all(cpu):
    from sam_edit.metrics import DEFAULT_METRICS

    with pytest.raises(ModelNotCachedError) as raised:
        loaders.load_score_models("default", cpu, DEFAULT_METRICS)
    assert "samedit models pull dino-vitb8 lpips-squeeze clip-l14" in str(raised.value)


@pytest.mark.parametrize(
    ("method", "segment", "rank", "expected"),
    [
        ("p2p", False, False, ["sd14"]),
        ("controlnet", True, False, ["sam-vit-b", "sd15", "controlnet-seg"]),
        ("residual", True, True, ["sam-vit-b", "clip-l14", "iclight-base", "iclight-fc"]),
        ("everything", True, True, ["sam-vit-b", "clip-l14", "sd15-inpaint"]),
        ("ip2p", False, False, ["ip2p"]),
        ("blended", False, False, ["sd15"]),
        (None, False, True, ["clip-l14"]),
    ],
)
def test_required_models(method, segment, rank, expected):
    assert loaders.required_models(method, segment=segment, rank=rank) == expected


def test_required_models_uses_sam_choice():
    assert loaders.required_models(None, segment=True, sam_model="sam-vit-h") == ["sam-vit-h"]


def test_every_method_requires_registry_models():
    for method in METHODS:
        names = loaders.required_models(method, segment=True, rank=True)
        assert set(names) <= set(MODELS), method


def test_score_models_by_metric():
    assert loaders.score_models(("psnr_unedit_part",)) == []
    assert loaders.score_models(("lpips_unedit_part", "clip_similarity_target_image")) == ["lpips-squeeze", "clip-l14"]


# Tiny set --------------------------------------------------------------------------------------


def test_tiny_checks_open_clip_first(monkeypatch, tmp_path):
    built = []
    monkeypatch.setattr(tiny, "WRITERS", {kind: lambda spec, folder: built.append(spec.name) for kind in tiny.WRITERS})
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if open_clip_torch were not installed
    with pytest.raises(SameditError) as raised:
        tiny.tiny_path(get_spec("sam-vit-b"), tmp_path)
    assert built == []
    assert "`open_clip_torch`" in str(raised.value)
    assert "pip install open_clip_torch" in str(raised.value)


def test_require_tiny_checks_open_clip(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMEDIT_CACHE_DIR", str(tmp_path))  # nothing built yet
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(SameditError, match="`open_clip_torch`"):
        loaders.require_models(["sam-vit-b", "sd14"], "tiny")
    assert not (tmp_path / "tiny").exists()


def test_clip_merges_file_found():
    path = vocab.clip_merges_path()
    assert path.name == vocab.MERGES_FILE
    assert path.is_file()
