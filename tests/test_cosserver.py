"""Tests of the fake COS server (tests/cosserver.py) with the real COS SDK."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

import pytest
from qcloud_cos import CosClientError, CosS3Client, CosServiceError

from tests.cosserver import CosTestServer, crc64, crc64_combine, shared_server

MiB = 1 << 20
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def server() -> CosTestServer:
    return shared_server()


@pytest.fixture(scope="module")
def bucket(server) -> str:
    return server.create_bucket("cosserver-test")


@pytest.fixture
def client(server) -> CosS3Client:
    return server.cos_client(retry=0)


@pytest.fixture(autouse=True)
def _no_leftover_faults(server):
    server.reset_faults()
    yield
    server.reset_faults()


def _read_all(response) -> bytes:
    return response["Body"].get_raw_stream().read()


def _stats_delta(before: dict, after: dict) -> dict:
    keys = set(before) | set(after)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    return {k: v for k, v in delta.items() if v}


# ---------------------------------------------------------------------------
# CRC helpers
# ---------------------------------------------------------------------------


def test_crc64_matches_known_value_and_combines():
    # CRC-64/XZ (ECMA-182 reflected) check value.
    assert crc64(b"123456789") == 0x995DC9BBDF1939FA
    data = os.urandom(100_000)
    for cut in (0, 1, 7, 4096, 99_999, 100_000):
        a, b = data[:cut], data[cut:]
        assert crc64_combine(crc64(a), crc64(b), len(b)) == crc64(data)
    assert crc64(data[50:], crc64(data[:50])) == crc64(data)


# ---------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------


def test_put_get_head_with_crc(client, bucket):
    data = os.urandom(200_000)
    key = "basic/object.bin"
    put = client.put_object(Bucket=bucket, Key=key, Body=data)
    assert put["x-cos-hash-crc64ecma"] == str(crc64(data))
    assert put["ETag"].strip('"')
    assert put["x-cos-request-id"]

    got = client.get_object(Bucket=bucket, Key=key)
    assert _read_all(got) == data
    assert got["x-cos-hash-crc64ecma"] == str(crc64(data))
    assert got["Content-Length"] == str(len(data))
    assert got["ETag"] == put["ETag"]
    assert "Last-Modified" in got

    head = client.head_object(Bucket=bucket, Key=key)
    assert head["Content-Length"] == str(len(data))
    assert head["x-cos-hash-crc64ecma"] == str(crc64(data))
    assert head["ETag"] == put["ETag"]
    assert "Last-Modified" in head
    assert not any(k.lower().startswith(("x-amz", "x-amzn")) for k in head)
    assert head["x-cos-request-id"] != got["x-cos-request-id"]


def test_empty_object(client, bucket):
    put = client.put_object(Bucket=bucket, Key="basic/empty", Body=b"")
    assert put["x-cos-hash-crc64ecma"] == "0"
    got = client.get_object(Bucket=bucket, Key="basic/empty")
    assert _read_all(got) == b""
    assert got["Content-Length"] == "0"


def test_ranged_get_reports_whole_object_crc(client, bucket):
    data = os.urandom(10_000)
    client.put_object(Bucket=bucket, Key="basic/ranged", Body=data)
    got = client.get_object(Bucket=bucket, Key="basic/ranged", Range="bytes=5-")
    assert _read_all(got) == data[5:]
    assert got["Content-Range"] == f"bytes 5-{len(data) - 1}/{len(data)}"
    assert got["Content-Length"] == str(len(data) - 5)
    assert got["x-cos-hash-crc64ecma"] == str(crc64(data))
    got = client.get_object(Bucket=bucket, Key="basic/ranged", Range="bytes=0-9")
    assert _read_all(got) == data[:10]


def test_metadata_round_trip(client, bucket):
    client.put_object(
        Bucket=bucket,
        Key="basic/meta",
        Body=b"x",
        Metadata={"x-cos-meta-mtime": "1700000000"},
        ContentType="text/plain",
    )
    head = client.head_object(Bucket=bucket, Key="basic/meta")
    assert head["x-cos-meta-mtime"] == "1700000000"
    assert head["Content-Type"] == "text/plain"


def test_chunked_upload_is_accepted(server, bucket):
    import requests
    from qcloud_cos.cos_auth import CosS3Auth

    def body():
        yield b"hello "
        yield b"chunked"

    r = requests.put(
        f"{server.endpoint_url}/basic/chunked",
        data=body(),
        headers={"Host": f"{bucket}.cos.{server.region}.myqcloud.com"},
        auth=CosS3Auth(server.cos_config(), "basic/chunked"),
        timeout=10,
    )
    assert r.request.headers["Transfer-Encoding"] == "chunked"
    assert r.status_code == 200, r.content
    assert r.headers["x-cos-hash-crc64ecma"] == str(crc64(b"hello chunked"))
    assert server.get_bytes(bucket, "basic/chunked") == b"hello chunked"


@pytest.mark.parametrize(
    "key",
    [
        "odd/a b+c%20d?e#f&g=h;中文.txt",
        "odd/a//b",
        "odd/./dot",
        "odd/trailing space ",
        "odd/~tilde!$'()*,=@",
    ],
)
def test_odd_keys_round_trip(client, bucket, server, key):
    client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    assert _read_all(client.get_object(Bucket=bucket, Key=key)) == key.encode()
    assert key in server.keys(bucket, "odd/")
    listed = client.list_objects(Bucket=bucket, Prefix=key)
    assert [c["Key"] for c in listed["Contents"]] == [key]


def test_missing_objects_and_buckets(client, bucket, server):
    with pytest.raises(CosServiceError) as info:
        client.head_object(Bucket=bucket, Key="missing/key")
    # The SDK itself names every HEAD 404 "NoSuchResource" (no body to read).
    assert info.value.get_status_code() == 404
    assert info.value.get_error_code() == "NoSuchResource"
    assert info.value.get_request_id() not in ("", "Unknown", None)

    with pytest.raises(CosServiceError) as info:
        client.get_object(Bucket=bucket, Key="missing/key")
    assert info.value.get_status_code() == 404
    assert info.value.get_error_code() == "NoSuchKey"
    assert info.value.get_request_id() not in ("", "Unknown", None)
    assert "missing/key" in info.value.get_resource_location()

    with pytest.raises(CosServiceError) as info:
        client.get_object(Bucket=f"nosuchbucket-{server.appid}", Key="k")
    assert info.value.get_error_code() == "NoSuchBucket"

    with pytest.raises(CosServiceError) as info:
        client.list_objects(Bucket=f"nosuchbucket-{server.appid}")
    assert info.value.get_error_code() == "NoSuchBucket"


def test_delete_object_and_delete_objects(client, bucket, server):
    for i in range(4):
        client.put_object(Bucket=bucket, Key=f"del/{i}", Body=b"x")
    client.delete_object(Bucket=bucket, Key="del/0")
    with pytest.raises(CosServiceError):
        client.head_object(Bucket=bucket, Key="del/0")
    result = client.delete_objects(
        Bucket=bucket,
        Delete={"Quiet": "false", "Object": [{"Key": f"del/{i}"} for i in (1, 2, 3)]},
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == ["del/1", "del/2", "del/3"]
    assert server.keys(bucket, "del/") == []


# ---------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listing_keys(server, bucket) -> list[str]:
    client = server.cos_client(retry=0)
    keys = [f"list/a/{i:05d}" for i in range(1010)]
    keys += ["list/b/x", "list/b/y/z", "list/c/y", "list/top1", "list/top2"]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b""), keys)
        )
    return sorted(keys)


def test_list_more_than_1000_keys_with_marker(client, bucket, listing_keys):
    page = client.list_objects(Bucket=bucket, Prefix="list/a/", MaxKeys=1000)
    assert page["IsTruncated"] == "true"
    assert len(page["Contents"]) == 1000
    assert page["NextMarker"] == "list/a/00999"
    assert page["Contents"][0]["Size"] == "0"
    rest = client.list_objects(
        Bucket=bucket, Prefix="list/a/", Marker=page["NextMarker"], MaxKeys=1000
    )
    assert rest["IsTruncated"] == "false"
    got = [c["Key"] for c in page["Contents"] + rest["Contents"]]
    assert got == [k for k in listing_keys if k.startswith("list/a/")]

    # Small pages, resuming from the last key of each page.
    seen, marker = [], ""
    while True:
        page = client.list_objects(
            Bucket=bucket, Prefix="list/", Marker=marker, MaxKeys=97
        )
        keys = [c["Key"] for c in page.get("Contents", [])]
        seen += keys
        if page["IsTruncated"] == "false":
            break
        marker = keys[-1]
    assert seen == listing_keys


def test_list_with_delimiter_pages_common_prefixes(client, bucket, listing_keys):
    entries, marker, pages = [], "", 0
    while True:
        page = client.list_objects(
            Bucket=bucket, Prefix="list/", Delimiter="/", Marker=marker, MaxKeys=2
        )
        pages += 1
        entries += [("dir", p["Prefix"]) for p in page.get("CommonPrefixes", [])]
        entries += [("file", c["Key"]) for c in page.get("Contents", [])]
        if page["IsTruncated"] == "false":
            assert "NextMarker" not in page
            break
        marker = page["NextMarker"]
    assert sorted(entries) == [
        ("dir", "list/a/"),
        ("dir", "list/b/"),
        ("dir", "list/c/"),
        ("file", "list/top1"),
        ("file", "list/top2"),
    ]
    assert pages == 3

    whole = client.list_objects(Bucket=bucket, Prefix="list/b/", Delimiter="/")
    assert [c["Key"] for c in whole["Contents"]] == ["list/b/x"]
    assert [p["Prefix"] for p in whole["CommonPrefixes"]] == ["list/b/y/"]
    assert whole["Prefix"] == "list/b/"

    empty = client.list_objects(Bucket=bucket, Prefix="list/nothing/", Delimiter="/")
    assert "Contents" not in empty and "CommonPrefixes" not in empty


def test_list_url_encoding(client, bucket):
    key = "enc/dir 100%/中文 a+b.txt"
    client.put_object(Bucket=bucket, Key=key, Body=b"1")
    client.put_object(Bucket=bucket, Key="enc/plain", Body=b"1")

    raw = client.list_objects(
        Bucket=bucket, Prefix="enc/", Delimiter="/", EncodingType="url"
    )
    prefixes = [p["Prefix"] for p in raw["CommonPrefixes"]]
    assert prefixes == ["enc/dir%20100%25/"]
    assert [unquote(p) for p in prefixes] == ["enc/dir 100%/"]
    raw = client.list_objects(Bucket=bucket, Prefix="enc/dir 100%/", EncodingType="url")
    assert raw["Prefix"] == "enc/dir%20100%25/"
    assert [unquote(c["Key"]) for c in raw["Contents"]] == [key]
    assert raw["Contents"][0]["Key"] != key

    # Without EncodingType the SDK asks for url encoding and decodes itself.
    decoded = client.list_objects(Bucket=bucket, Prefix="enc/", Delimiter="/")
    assert [p["Prefix"] for p in decoded["CommonPrefixes"]] == ["enc/dir 100%/"]
    assert [c["Key"] for c in decoded["Contents"]] == ["enc/plain"]


# ---------------------------------------------------------------------------
# Multipart and copies
# ---------------------------------------------------------------------------


def test_multipart_upload_with_crc(client, bucket, server):
    key = "mpu/whole.bin"
    parts_data = [os.urandom(MiB + 123), os.urandom(MiB), os.urandom(1000)]
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    assert (key, upload_id) in server.pending_uploads(bucket)
    parts = []
    for number, data in enumerate(parts_data, 1):
        r = client.upload_part(
            Bucket=bucket, Key=key, Body=data, PartNumber=number, UploadId=upload_id
        )
        assert r["x-cos-hash-crc64ecma"] == str(crc64(data))
        parts.append({"PartNumber": number, "ETag": r["ETag"]})
    listed = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    assert [int(p["PartNumber"]) for p in listed["Part"]] == [1, 2, 3]
    done = client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Part": parts}
    )
    whole = b"".join(parts_data)
    assert done["x-cos-hash-crc64ecma"] == str(crc64(whole))
    assert done["ETag"].strip('"').endswith("-3")
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["x-cos-hash-crc64ecma"] == str(crc64(whole))
    assert head["Content-Length"] == str(len(whole))
    assert server.get_bytes(bucket, key) == whole
    assert all(k != key for k, _ in server.pending_uploads(bucket))


def test_multipart_parts_in_parallel(server, bucket):
    client = server.cos_client(retry=0)
    key = "mpu/parallel.bin"
    chunks = [os.urandom(MiB) for _ in range(4)]
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    def send(number):
        r = client.upload_part(
            Bucket=bucket,
            Key=key,
            Body=chunks[number - 1],
            PartNumber=number,
            UploadId=upload_id,
        )
        return {"PartNumber": number, "ETag": r["ETag"]}

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(send, [4, 3, 2, 1]))
    parts.sort(key=lambda p: p["PartNumber"])
    done = client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Part": parts}
    )
    assert done["x-cos-hash-crc64ecma"] == str(crc64(b"".join(chunks)))


def test_parts_below_1mb_are_too_small(client, bucket):
    key = "mpu/small.bin"
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number in (1, 2):
        r = client.upload_part(
            Bucket=bucket,
            Key=key,
            Body=b"x" * (MiB - 1),
            PartNumber=number,
            UploadId=upload_id,
        )
        parts.append({"PartNumber": number, "ETag": r["ETag"]})
    with pytest.raises(CosServiceError) as info:
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Part": parts}
        )
    assert info.value.get_error_code() == "EntityTooSmall"
    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def test_abort_and_list_multipart_uploads(client, bucket, server):
    keys = ["uploads/one", "uploads/two 100%.bin"]
    ids = {
        k: client.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"]
        for k in keys
    }
    listed = client.list_multipart_uploads(Bucket=bucket, Prefix="uploads/")
    assert sorted((u["Key"], u["UploadId"]) for u in listed["Upload"]) == sorted(
        ids.items()
    )
    raw = client.list_multipart_uploads(
        Bucket=bucket, Prefix="uploads/", EncodingType="url"
    )
    assert "uploads/two%20100%25.bin" in [u["Key"] for u in raw["Upload"]]

    client.abort_multipart_upload(Bucket=bucket, Key=keys[0], UploadId=ids[keys[0]])
    pending = [p for p in server.pending_uploads(bucket) if p[0].startswith("uploads/")]
    assert pending == [(keys[1], ids[keys[1]])]
    with pytest.raises(CosServiceError) as info:
        client.abort_multipart_upload(Bucket=bucket, Key=keys[0], UploadId=ids[keys[0]])
    assert info.value.get_error_code() == "NoSuchUpload"
    with pytest.raises(CosServiceError) as info:
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=keys[0],
            UploadId=ids[keys[0]],
            MultipartUpload={"Part": [{"PartNumber": 1, "ETag": '"x"'}]},
        )
    assert info.value.get_error_code() == "NoSuchUpload"
    client.abort_multipart_upload(Bucket=bucket, Key=keys[1], UploadId=ids[keys[1]])
    assert not [
        p for p in server.pending_uploads(bucket) if p[0].startswith("uploads/")
    ]


def test_copy_object_replacing_metadata(client, bucket, server):
    data = os.urandom(5000)
    src = "copy/src 中文.bin"
    client.put_object(
        Bucket=bucket, Key=src, Body=data, Metadata={"x-cos-meta-mtime": "1"}
    )
    source = {"Bucket": bucket, "Key": src, "Region": server.region}

    copied = client.copy_object(
        Bucket=bucket,
        Key="copy/dst",
        CopySource=source,
        CopyStatus="Replaced",
        Metadata={"x-cos-meta-mtime": "1700000000"},
    )
    assert copied["ETag"]
    assert copied["x-cos-hash-crc64ecma"] == str(crc64(data))
    head = client.head_object(Bucket=bucket, Key="copy/dst")
    assert head["x-cos-meta-mtime"] == "1700000000"
    assert head["x-cos-hash-crc64ecma"] == str(crc64(data))
    assert server.get_bytes(bucket, "copy/dst") == data

    client.copy_object(Bucket=bucket, Key="copy/kept", CopySource=source)
    assert client.head_object(Bucket=bucket, Key="copy/kept")["x-cos-meta-mtime"] == "1"

    with pytest.raises(CosServiceError) as info:
        client.copy_object(
            Bucket=bucket,
            Key="copy/none",
            CopySource={
                "Bucket": bucket,
                "Key": "copy/missing",
                "Region": server.region,
            },
        )
    assert info.value.get_error_code() == "NoSuchKey"


def test_upload_part_copy_with_range(client, bucket, server):
    data = os.urandom(2 * MiB + 10)
    client.put_object(Bucket=bucket, Key="pcopy/src", Body=data)
    source = {"Bucket": bucket, "Key": "pcopy/src", "Region": server.region}
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="pcopy/dst")[
        "UploadId"
    ]
    ranges = [(0, MiB - 1), (MiB, len(data) - 1)]
    parts = []
    for number, (first, last) in enumerate(ranges, 1):
        r = client.upload_part_copy(
            Bucket=bucket,
            Key="pcopy/dst",
            PartNumber=number,
            UploadId=upload_id,
            CopySource=source,
            CopySourceRange=f"bytes={first}-{last}",
        )
        assert r["x-cos-hash-crc64ecma"] == str(crc64(data[first : last + 1]))
        parts.append({"PartNumber": number, "ETag": r["ETag"]})
    done = client.complete_multipart_upload(
        Bucket=bucket,
        Key="pcopy/dst",
        UploadId=upload_id,
        MultipartUpload={"Part": parts},
    )
    assert done["x-cos-hash-crc64ecma"] == str(crc64(data))
    assert server.get_bytes(bucket, "pcopy/dst") == data


# ---------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------


def test_bad_credentials_are_refused(server, bucket):
    bad_key = server.cos_client(retry=0, SecretKey="wrong-secret-key")
    with pytest.raises(CosServiceError) as info:
        bad_key.put_object(Bucket=bucket, Key="auth/x", Body=b"x")
    assert info.value.get_status_code() == 403
    assert info.value.get_error_code() == "SignatureDoesNotMatch"
    assert info.value.get_request_id() not in ("", "Unknown")

    bad_id = server.cos_client(retry=0, SecretId="AKIDwrongwrongwrong")
    with pytest.raises(CosServiceError) as info:
        bad_id.list_objects(Bucket=bucket, Prefix="auth/")
    assert info.value.get_status_code() == 403
    assert info.value.get_error_code() == "InvalidAccessKeyId"

    anonymous = server.cos_client(retry=0, Anonymous=True)
    with pytest.raises(CosServiceError) as info:
        anonymous.get_object(Bucket=bucket, Key="auth/x")
    assert info.value.get_error_code() == "AccessDenied"
    assert "auth/x" not in server.keys(bucket, "auth/")


def test_presigned_url(client, bucket, server):
    import requests

    client.put_object(Bucket=bucket, Key="auth/pre signed", Body=b"hello")
    url = client.get_presigned_url(
        Bucket=bucket, Key="auth/pre signed", Method="GET", SignHost=False
    )
    host = {"Host": f"{bucket}.cos.{server.region}.myqcloud.com"}
    r = requests.get(url, headers=host, timeout=10)
    assert r.status_code == 200 and r.content == b"hello"
    assert r.headers["x-cos-hash-crc64ecma"] == str(crc64(b"hello"))
    r = requests.get(
        url.replace("q-signature=", "q-signature=0"), headers=host, timeout=10
    )
    assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content


# ---------------------------------------------------------------------------
# Faults and stats
# ---------------------------------------------------------------------------


def test_fault_fail_answers_500_then_recovers(client, bucket, server):
    server.inject("fail", op="PutObject", count=2)
    for _ in range(2):
        with pytest.raises(CosServiceError) as info:
            client.put_object(Bucket=bucket, Key="fault/put", Body=b"x")
        assert info.value.get_status_code() == 500
        assert info.value.get_error_code() == "InternalError"
    assert "fault/put" not in server.keys(bucket, "fault/")
    client.put_object(Bucket=bucket, Key="fault/put", Body=b"x")
    assert server.faults() == []

    server.inject("fail", op="UploadPart", status=503)
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="fault/mpu")[
        "UploadId"
    ]
    with pytest.raises(CosServiceError) as info:
        client.upload_part(
            Bucket=bucket, Key="fault/mpu", Body=b"x", PartNumber=1, UploadId=upload_id
        )
    assert info.value.get_status_code() == 503
    assert info.value.get_error_code() == "SlowDown"
    client.abort_multipart_upload(Bucket=bucket, Key="fault/mpu", UploadId=upload_id)


def test_fault_fail_after_the_write_happened(client, bucket, server):
    data = os.urandom(MiB)
    key = "fault/lost-reply"
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    r = client.upload_part(
        Bucket=bucket, Key=key, Body=data, PartNumber=1, UploadId=upload_id
    )
    server.inject("fail", op="CompleteMultipartUpload", key=key, after=True)
    with pytest.raises(CosServiceError) as info:
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Part": [{"PartNumber": 1, "ETag": r["ETag"]}]},
        )
    assert info.value.get_status_code() == 500
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["x-cos-hash-crc64ecma"] == str(crc64(data))
    assert (key, upload_id) not in server.pending_uploads(bucket)


def test_fault_drop_connection(client, bucket, server):
    client.put_object(Bucket=bucket, Key="fault/drop", Body=b"abc")
    server.inject("fail", op="GetObject", key="fault/drop", drop=True)
    with pytest.raises(CosClientError):
        client.get_object(Bucket=bucket, Key="fault/drop")
    assert _read_all(client.get_object(Bucket=bucket, Key="fault/drop")) == b"abc"

    # With retries the SDK hides a dropped reply (after sleeping 1 s).
    server.inject("fail", op="HeadObject", key="fault/drop", drop=True, reset=True)
    retrying = server.cos_client(retry=1)
    assert (
        retrying.head_object(Bucket=bucket, Key="fault/drop")["Content-Length"] == "3"
    )


def test_fault_corrupt_get(client, bucket, server):
    data = os.urandom(100_000)
    client.put_object(Bucket=bucket, Key="fault/corrupt", Body=data)
    server.inject("corrupt-get", key="fault/corrupt")
    got = client.get_object(Bucket=bucket, Key="fault/corrupt")
    body = _read_all(got)
    assert len(body) == len(data) and body != data
    assert sum(a != b for a, b in zip(body, data)) == 1
    assert got["x-cos-hash-crc64ecma"] == str(crc64(data))
    assert str(crc64(body)) != got["x-cos-hash-crc64ecma"]
    # Only once; ranged reads are corrupted too (offset within the reply).
    assert _read_all(client.get_object(Bucket=bucket, Key="fault/corrupt")) == data
    server.inject("corrupt-get", key="fault/corrupt", offset=0)
    ranged = client.get_object(Bucket=bucket, Key="fault/corrupt", Range="bytes=10-19")
    assert _read_all(ranged) != data[10:20]


def test_fault_truncate_get(client, bucket, server):
    data = os.urandom(300_000)
    client.put_object(Bucket=bucket, Key="fault/truncate", Body=data)
    server.inject("truncate-get", key="fault/truncate", after=1000)
    got = client.get_object(Bucket=bucket, Key="fault/truncate")
    assert got["Content-Length"] == str(len(data))
    raw = got["Body"].get_raw_stream()
    received = bytearray()
    with pytest.raises(Exception) as info:
        while True:
            chunk = raw.read(65536)
            if not chunk:
                break
            received += chunk
        raise AssertionError(f"no error; {len(received)} bytes")
    assert not isinstance(info.value, AssertionError), info.value
    assert len(received) <= 1000
    assert _read_all(client.get_object(Bucket=bucket, Key="fault/truncate")) == data


def test_fault_delay_and_reset(client, bucket, server):
    client.put_object(Bucket=bucket, Key="fault/delay", Body=b"x")
    server.inject("delay", op="HeadObject", seconds=0.3)
    start = time.monotonic()
    client.head_object(Bucket=bucket, Key="fault/delay")
    assert time.monotonic() - start >= 0.3

    server.inject("fail", op="*", count=-1)
    with pytest.raises(CosServiceError):
        client.head_object(Bucket=bucket, Key="fault/delay")
    server.reset_faults()
    assert server.faults() == []
    client.head_object(Bucket=bucket, Key="fault/delay")

    with pytest.raises(ValueError):
        server.inject("no-such-kind")


def _head_outcomes(client, bucket: str, key: str, n: int) -> list[str]:
    """What each of n HEADs of key met: ok, the COS error code, or client."""
    outcomes = []
    for _ in range(n):
        try:
            client.head_object(Bucket=bucket, Key=key)
            outcomes.append("ok")
        except CosServiceError as e:
            outcomes.append(str(e.get_status_code()))
        except CosClientError:
            outcomes.append("client")
    return outcomes


def test_fault_probability_is_seeded_and_counted(client, bucket, server):
    """
    A probabilistic fault strikes about its share of the matching requests,
    the same ones again for the same seed, and reports what it did.
    """
    client.put_object(Bucket=bucket, Key="fault/dice", Body=b"abc")
    client.put_object(Bucket=bucket, Key="fault/other", Body=b"abc")
    runs = []
    for _ in range(2):
        server.reset_faults()
        server.inject(
            "fail",
            op="HeadObject",
            key="fault/dice",
            count=-1,
            probability=0.25,
            seed=11,
            status=503,
        )
        outcomes = _head_outcomes(client, bucket, "fault/dice", 200)
        # Requests the fault does not match do not roll its dice.
        assert _head_outcomes(client, bucket, "fault/other", 20) == ["ok"] * 20
        (fault,) = server.faults()
        assert fault["seen"] == 200
        assert fault["hits"] == outcomes.count("503")
        runs.append(outcomes)
    assert runs[0] == runs[1]
    assert set(runs[0]) == {"ok", "503"}
    assert 25 <= runs[0].count("503") <= 75


def test_fault_probability_with_a_count(client, bucket, server):
    """count counts strikes: the fault is gone after that many."""
    client.put_object(Bucket=bucket, Key="fault/dice3", Body=b"abc")
    server.inject(
        "fail", op="HeadObject", key="fault/dice3", count=3, probability=0.5, seed=3
    )
    outcomes = _head_outcomes(client, bucket, "fault/dice3", 60)
    assert outcomes.count("500") == 3
    assert server.faults() == []


def test_probabilistic_faults_mix_kinds(client, bucket, server):
    """
    Several probabilistic faults mix kinds: answers 500 and 503, dropped
    and reset connections, replies lost after the write happened.
    """
    kinds = [
        {"status": 500},
        {"status": 503},
        {"drop": True},
        {"drop": True, "reset": True},
        {"after": True, "status": 500},
    ]
    for seed, extra in enumerate(kinds):
        server.inject(
            "fail",
            op="PutObject",
            bucket=bucket,
            count=-1,
            probability=0.15,
            seed=seed,
            **extra,
        )
    outcomes = []
    for n in range(120):
        key = f"fault/mix/{n}"
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"x")
            outcomes.append(("ok", key))
        except CosServiceError as e:
            outcomes.append((str(e.get_status_code()), key))
        except CosClientError:
            outcomes.append(("client", key))
    faults = server.faults()
    assert [f["hits"] > 0 for f in faults] == [True] * len(kinds)
    assert sum(f["hits"] for f in faults) == sum(o != "ok" for o, _ in outcomes)
    assert {o for o, _ in outcomes} == {"ok", "500", "503", "client"}
    stored = set(server.keys(bucket, "fault/mix/"))
    lost = [key for o, key in outcomes if o == "500" and key in stored]
    assert len(lost) == faults[4]["hits"]


def test_probabilistic_get_faults_need_no_key(client, bucket, server):
    """truncate-get with a probability strikes any GET of the bucket."""
    data = os.urandom(50_000)
    client.put_object(Bucket=bucket, Key="fault/anykey", Body=data)
    with pytest.raises(ValueError):
        server.inject("truncate-get")
    with pytest.raises(ValueError):
        server.inject("fail", probability=0)
    server.inject(
        "truncate-get", bucket=bucket, count=-1, probability=1.0, after=10, reset=True
    )
    got = client.get_object(Bucket=bucket, Key="fault/anykey")
    with pytest.raises(Exception) as info:
        got["Body"].get_raw_stream().read()
        raise AssertionError("the whole body arrived")
    assert not isinstance(info.value, AssertionError), info.value


def test_fault_corrupt_put(client, bucket, server):
    """
    corrupt-put stores one flipped byte and answers with the CRC of what was
    sent; the stored object then reports its own bytes' CRC.
    """
    data = os.urandom(2 * MiB)
    server.inject("corrupt-put", op="PutObject", key="fault/rot", offset=7)
    put = client.put_object(Bucket=bucket, Key="fault/rot", Body=data)
    assert put["x-cos-hash-crc64ecma"] == str(crc64(data))
    stored = server.get_bytes(bucket, "fault/rot")
    assert len(stored) == len(data) and stored[7] == data[7] ^ 1
    head = client.head_object(Bucket=bucket, Key="fault/rot")
    assert head["x-cos-hash-crc64ecma"] == str(crc64(stored))

    key = "fault/rot-mp"
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    server.inject("corrupt-put", key=key)
    part = client.upload_part(
        Bucket=bucket, Key=key, Body=data, PartNumber=1, UploadId=upload_id
    )
    assert part["x-cos-hash-crc64ecma"] == str(crc64(data))
    client.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Part": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    stored = server.get_bytes(bucket, key)
    assert stored != data and len(stored) == len(data)
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["x-cos-hash-crc64ecma"] == str(crc64(stored))
    with pytest.raises(ValueError):
        server.inject("corrupt-put", op="GetObject")


def test_stats_count_cos_requests_only(client, bucket, server):
    client.put_object(Bucket=bucket, Key="stats/x", Body=b"x")
    before = server.stats()
    assert server.get_bytes(bucket, "stats/x") == b"x"  # bypass, not a GetObject
    client.head_object(Bucket=bucket, Key="stats/x")
    client.list_objects(Bucket=bucket, Prefix="stats/")
    delta = _stats_delta(before, server.stats())
    assert delta.pop("_bypass") >= 1
    assert delta == {"HeadObject": 1, "ListObjects": 1}


# ---------------------------------------------------------------------------
# Process lifecycle
# ---------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_stop_and_no_orphan_when_parent_dies(tmp_path):
    own = CosTestServer()
    own.start()
    pid = own.pid
    assert _alive(pid)
    own.stop()
    assert not _alive(pid)

    script = (
        "import sys, time\n"
        "from tests.cosserver import CosTestServer\n"
        "s = CosTestServer(); s.start()\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
    )
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
