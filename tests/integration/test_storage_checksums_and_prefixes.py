import urllib.request
from pathlib import Path

import pytest

from storage import s3


def test_put_get_round_trip_with_sha256(bucket: None, tmp_path: Path) -> None:
    source = tmp_path / "blob"
    source.write_bytes(b"x" * (3 * 1024 * 1024 + 17))
    digest = s3.put_file("t/roundtrip/blob", source)
    assert digest == s3.sha256_file(source)
    target = tmp_path / "copy"
    s3.download_file("t/roundtrip/blob", target, sha256=digest)
    assert target.read_bytes() == source.read_bytes()
    assert s3.exists("t/roundtrip/blob") and not s3.exists("t/roundtrip/missing")


def test_download_with_wrong_checksum_leaves_no_file(bucket: None, tmp_path: Path) -> None:
    s3.put_bytes("t/corrupt/blob", b"payload")
    target = tmp_path / "copy"
    with pytest.raises(s3.StorageError, match="checksum mismatch"):
        s3.download_file("t/corrupt/blob", target, sha256="0" * 64)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_presigned_url_serves_the_object(bucket: None) -> None:
    s3.put_bytes("t/presigned/a.txt", b"hello")
    with urllib.request.urlopen(s3.presigned_url("t/presigned/a.txt", seconds=60)) as response:
        assert response.read() == b"hello"


def test_delete_prefix_refuses_root_and_deletes_a_folder(bucket: None) -> None:
    for name in ("a", "b", "c/d"):
        s3.put_bytes(f"t/prefix/{name}", b"1")
    s3.put_bytes("t/prefix-sibling", b"keep")
    for bad in ("", "/", "t/prefix"):
        with pytest.raises(s3.StorageError, match="refusing"):
            s3.delete_prefix(bad)
    assert s3.delete_prefix("t/prefix/") == 3
    assert s3.list_keys("t/prefix/") == [] and s3.exists("t/prefix-sibling")


def test_missing_object_is_a_storage_error(bucket: None) -> None:
    with pytest.raises(s3.StorageError, match="t/none"):
        s3.get_bytes("t/none")
