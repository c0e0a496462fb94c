"""The process's S3 clients: one model loader shared, credentials still each session's own."""

from __future__ import annotations

import pytest

from wiseverify.core import s3 as S3
from wiseverify.core.s3 import S3Target


@pytest.fixture
def profile_only(tmp_path, monkeypatch):
    """A shared-credentials file with one profile, and no keys in the environment."""
    creds = tmp_path / "credentials"
    creds.write_text("[audit]\naws_access_key_id = AKIDFROMPROFILE\n"
                     "aws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)


def test_profile_signs_the_requests_and_models_are_parsed_once(s3, bucket, profile_only):
    S3.preload_models()
    from aiobotocore.session import AioSession

    loader = S3.shared_loader(AioSession())
    target = S3Target.parse(f"s3://{bucket}/p/", endpoint_url=s3.url, profile="audit")
    client = target.run(target.client)
    assert client._request_signer._credentials.access_key == "AKIDFROMPROFILE"
    assert target.filesystem().session.get_component("data_loader") is loader
    listed = target.run(lambda: client.list_objects_v2(Bucket=bucket, Prefix="p/"))
    assert listed["KeyCount"] == 0
    # another endpoint's client in the same process: the same parsed models, no new parse
    files = loader.file_loader
    calls = []
    parse = files.load_file
    files.load_file = lambda path: calls.append(path) or parse(path)
    try:
        other = S3Target.parse(f"s3://{bucket}/q/", endpoint_url=s3.url + "/", profile="audit")
        other.run(other.client)
    finally:
        del files.load_file
    assert other.filesystem() is not target.filesystem()
    assert other.filesystem().session.get_component("data_loader") is loader
    assert calls == []


def test_a_missing_profile_is_still_refused(s3, bucket, profile_only):
    from botocore.exceptions import ProfileNotFound

    target = S3Target.parse(f"s3://{bucket}/", endpoint_url=s3.url, profile="nosuch")
    with pytest.raises(ProfileNotFound):
        target.run(target.client)
