"""Seed 002's two snippets (Lambda's "Authentication" page for its Python client) run unmodified
against Nimbus with only `NIMBUS_URL` (and, for the second, `LAMBDA_API_KEY`) set.

seed002_auth.py and seed002_env.py are the snippets copied byte for byte from the seed; do not
edit them. Each runs as its own `python FILE` process with the installed package, then again
under runpy so the test can use the `client` the snippet built against the live server.
"""

from __future__ import annotations

from pathlib import Path

from conftest import run_python

HERE = Path(__file__).resolve().parent
AUTH = HERE / "seed002_auth.py"
ENV = HERE / "seed002_env.py"


def test_snippets_are_the_seed_text():
    # The first lines of each snippet as the seed prints them (guards against "fixing" them).
    assert AUTH.read_text().startswith('from lambda_cloud import LambdaCloudClient\n\n# Initialize with your API key\nclient = LambdaCloudClient(api_key="your-api-key")\n')
    assert ENV.read_text().startswith('import os\nfrom lambda_cloud import LambdaCloudClient\n\n# Get API key from environment variable\napi_key = os.environ.get("LAMBDA_API_KEY")\n')


def test_auth_snippet_runs(child_env):
    p = run_python(str(AUTH), child_env)
    assert p.returncode == 0, p.stderr


def test_env_snippet_runs(child_env):
    p = run_python(str(ENV), child_env)
    assert p.returncode == 0, p.stderr


def test_env_snippet_without_key_raises_its_error(child_env):
    env = {k: v for k, v in child_env.items() if k != "LAMBDA_API_KEY"}
    p = run_python(str(ENV), env)
    assert p.returncode != 0 and "LAMBDA_API_KEY environment variable is not set" in p.stderr


def test_env_snippet_client_talks_to_nimbus_url(child_env, server):
    code = f"""
import runpy
g = runpy.run_path({str(ENV)!r})
client = g["client"]
assert client.base_url == {server.url!r}, client.base_url
assert client._transport.headers["Authorization"] == "Bearer {server.key}"
types = client.instance_types.list()
assert "cpu_1x_small" in types, list(types)
print("ok", len(types))
"""
    p = run_python(code, child_env, is_code=True)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stdout + p.stderr


def test_auth_snippet_client_sends_its_key_as_bearer(child_env, server):
    code = f"""
import runpy
from lambda_cloud import LambdaCloudError
g = runpy.run_path({str(AUTH)!r})
client = g["client"]
assert client.base_url == {server.url!r}, client.base_url
assert client._transport.headers["Authorization"] == "Bearer your-api-key"
try:
    client.instances.list()
except LambdaCloudError as e:
    # the server saw "your-api-key" and refused it with Lambda's code
    assert (e.status, e.code) == (401, "global/invalid-api-key"), e
    print("ok")
"""
    p = run_python(code, child_env, is_code=True)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stdout + p.stderr
