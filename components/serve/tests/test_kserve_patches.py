"""The one module that patches KServe: it refuses a KServe it was not written for, and each
patch can be applied again without stacking."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest import server as rest

from components.serve import kserve_patches


def test_the_installed_kserve_is_the_supported_one():
    assert kserve_patches.installed_kserve() == kserve_patches.SUPPORTED_KSERVE == "0.20.0"
    kserve_patches.check_kserve("0.20.0")
    with pytest.raises(kserve_patches.UnsupportedKServe, match=r"KServe 0\.20\.0.*0\.21\.0"):
        kserve_patches.check_kserve("0.21.0")


def test_the_bounded_protocol_is_installed_only_on_the_uvicorn_it_was_written_for():
    assert kserve_patches.installed_uvicorn().startswith(kserve_patches.SUPPORTED_UVICORN)
    kserve_patches.check_uvicorn(kserve_patches.installed_uvicorn())
    with pytest.raises(kserve_patches.UnsupportedKServe, match=r"uvicorn 0\.60\.1 is installed"):
        kserve_patches.check_uvicorn("0.60.1")


@pytest.mark.timeout(120)
def test_importing_the_patches_with_another_kserve_fails_naming_the_supported_version():
    code = ("import importlib.metadata as m\n"
            "real = m.version\n"
            "m.version = lambda name: '0.21.0' if name == 'kserve' else real(name)\n"
            "import components.serve.kserve_patches\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=110)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("components.serve.kserve_patches.UnsupportedKServe:"), run.stderr
    assert "kserve 0.21.0 is installed" in last and "kserve==0.20.0" in last


def test_patches_applied_twice_do_not_stack(monkeypatch):
    # KServe's own functions, whether or not a predictor loaded earlier in this process.
    original_create = getattr(rest.RESTServer.create_application, "unconfigured",
                              rest.RESTServer.create_application)
    original_init = getattr(rest.RESTServer.__init__, "wrapped", rest.RESTServer.__init__)
    original_decode = getattr(DataPlane.decode_inference_request, "undecoded",
                              DataPlane.decode_inference_request)
    monkeypatch.setattr(rest.RESTServer, "create_application", original_create)
    monkeypatch.setattr(rest.RESTServer, "__init__", original_init)
    monkeypatch.setattr(DataPlane, "decode_inference_request", original_decode)
    calls = []
    kserve_patches.configure_rest_app(lambda app, server: calls.append("first"))
    kserve_patches.configure_rest_app(lambda app, server: calls.append("second"))
    assert rest.RESTServer.create_application.unconfigured is original_create
    kserve_patches.configure_uvicorn("127.0.0.1")
    kserve_patches.configure_uvicorn("::1", keepalive_timeout_s=5)
    assert rest.RESTServer.__init__.wrapped is original_init
    kserve_patches.decode_raw_v2_bodies_with(lambda body, headers, name: ("one", body))
    kserve_patches.decode_raw_v2_bodies_with(lambda body, headers, name: ("two", body))
    assert DataPlane.decode_inference_request.undecoded is original_decode
    assert DataPlane.decode_inference_request(None, b"{}", {}, "m") == ("two", b"{}")


def test_a_raw_input_is_read_from_its_bytes():
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    inp = kserve_patches.raw_infer_input("input", [1, 2, 3], "FP32", x.tobytes(), None)
    assert np.array_equal(inp.as_numpy(), x)
