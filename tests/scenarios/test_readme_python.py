"""The README's Python API example runs as written: the block is read out of README.md and run
in a fresh interpreter, in an empty folder, against a local stand-in of the official bucket.

The manifest's hosts are replaced by a FaultServer speaking TLS (the manifest accepts https
hosts only; the certificate is trusted through ``REQUESTS_CA_BUNDLE``), and the lab's bucket
``s3://lab-bucket`` is a moto S3 server (``AWS_ENDPOINT_URL``): the example's own calls, with
its own arguments, do the work. Only a path that cannot exist on a test machine is replaced
(:data:`PLACES`), and only if the README still names it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import cli_env
from support.netpeers import self_signed_certificate, serve_tls
from support.servers import FaultServer

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.synthetic import build_dataset

README = Path(__file__).resolve().parents[2] / "README.md"
PREFIX = "/challenges/2020/"
#: Placeholders of the example that name a machine's folders, and what stands in for them.
PLACES = {'"/mnt/copy"': '"./isic2020-data"'}


def readme_python_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python API", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's Python API section"
    return match.group(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    # enough patients for the example's five folds
    return build_dataset(tmp_path_factory.mktemp("syn"), n_train=60, n_test=6)


def test_the_readme_python_example_runs_as_written(dataset, s3_server, tmp_path: Path) -> None:
    code = readme_python_example()
    for placeholder, here in PLACES.items():
        code = code.replace(placeholder, here)
    assert "isic2020.fetch(" in code and "isic2020.make_folds(" in code
    s3_server.create_bucket("lab-bucket")
    cert, key = self_signed_certificate(tmp_path / "tls")
    work = tmp_path / "work"
    work.mkdir()
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        url = serve_tls(srv, cert, key)
        man = load_manifest(dataset.manifest_path)
        files = tuple(dataclasses.replace(f, hosts=(url,)) for f in man.files)
        manifest = tmp_path / "local-hosts.toml"
        manifest.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
        env = cli_env(manifest, REQUESTS_CA_BUNDLE=str(cert), AWS_ENDPOINT_URL=s3_server.endpoint,
                      AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.pop(k, None)
        if env.get("PYTHONPATH"):  # the source under test, also from another folder
            env["PYTHONPATH"] = os.pathsep.join(
                str(Path(p).absolute()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
        proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert srv.requests(), "the example fetched from somewhere else"
    data = work / "isic2020-data"
    assert len(list((data / "jpeg" / "train").iterdir())) == len(dataset.train_names)
    assert (data / "folds.csv").is_file() and (work / "SHA256SUMS").is_file()
    assert (work / "kaggle-layout" / "train.csv").is_file()
    assert (data / "jpeg-512").is_dir()
    keys = {o["Key"] for o in s3_server.client.list_objects_v2(
        Bucket="lab-bucket", Prefix="isic2020/").get("Contents", [])}
    assert "isic2020/isic2020-pinned.toml" in keys, keys
