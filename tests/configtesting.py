"""
Inline configurations, public keys and checks shared by the tests of
L{cosgw.config}.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from cosgw.config import (
    ConfigError,
)

ROOT = Path(__file__).resolve().parent.parent


EXAMPLE = ROOT / "etc" / "cosgw.ini"


V5_SAMPLE = Path(__file__).resolve().parent / "data" / "v5-vsftpd.conf"


MIB = 1024 * 1024


GIB = 1024 * MIB


# Secrets used by the inline configs below; none may appear in an error, a
# notice or a repr.
SECRET_KEY = "SUPERSECRETKEYVALUE"


TOKEN = "SUPERSECRETTOKENVALUE"


PASSWORD = "SUPERSECRETPASSWORD"


STORAGE = f"""
[storage:main]
type = cos
bucket = examplebucket-1250000000
region = ap-guangzhou
secret_id = AKIDTESTTESTTESTTEST
secret_key = {SECRET_KEY}
token = {TOKEN}
"""


USER = f"""
[user:alice]
password = {PASSWORD}
"""


BASE = STORAGE + USER


# A user's own bucket, for a [user:NAME] section.
OWN_BUCKET = f"""
bucket = ownbucket-1250000000
region = ap-shanghai
secret_id = AKIDOWNOWNOWNOWN
secret_key = {SECRET_KEY}
token = {TOKEN}
"""


# Public keys (their private halves were thrown away).
ED25519 = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMO74oQ5BpfrlzlQHxDlZn7HuwK+m2SsJ+4jEKxGSo4p"
)


ECDSA = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPUKxodtprkp2H1RiZjDSFWNhvkQ0x7N1lqiRXaqTIUJ8KOYO41A//aBTK0XWi6WOE/HfsVE2/rFvHLblaDwdOg="


RSA_2048 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQD2WQrapWDqN+5LbHXGQxpWeRF+tnj6k1zBswhhfxEjT4GFIcqqxk6t+Azf4FPhTWRIB3gqPhg8XkwfQpEcoQ/1JJJUkYonEIHB0+CJDit/02dsfwQ0PaoADccFoxwQiGuNb7O3qEnfLXwK1OGHRlYUpq2bO877rx0+4vypdfTsK0pSI/xyI+/HtYhDCO53ApwCoeeWFfHGHt2sqG9Y7sPI77+waO2aFVGGK/yYyJ6yk+P6B+kRSM2c+baP83t5kIb/xz5t3zAg3MV1MK/OBbtybeoxYANZaFF4kXfI8AoGibnE8JuEyMdV4zgmtJiCa1oNqMEvbtbuyX86NRB6v1Kr"


RSA_1024 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDStRXI5LX7Wl6zPxiMUIQJWkPomfPWsAh1bVOS2crJWNZ7t6W0gDaTk5/ikram7dxd1wwDTBpcX6XQuZeUcviWUMVNvo1NW4eqOK8qgFXzjoaHfrkyvjE6OhjbHwrXwTGZCUqaPECQ4vo+uvPoMVHiJKvhZ1QgE7Vw8RjpVaXnkw=="


# Refused by its type before its data is read.
DSA = "ssh-dss AAAAB3NzaC1kc3MAAACBANQHG8ahZPpNVeAo8z3mVMe5y7IM1bs8Q9bXy8EzoG4l"


def keys_value(*lines: str) -> str:
    """An authorized_keys value over indented continuation lines."""
    return "authorized_keys =\n" + "".join(f"    {line}\n" for line in lines)


def write(tmp_path: Path, text: str, name: str = "cosgw.ini") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def v5_account(n: int, **overrides: str) -> str:
    """One [COS_ACCOUNT_<n>] section; an override of "" drops the key."""
    keys = {
        "cos_secretid": f"AKIDTESTTESTTEST{n}",
        "cos_secretkey": f"{SECRET_KEY}{n}",
        "cos_bucket": "examplebucket-1250000000",
        "cos_region": "ap-guangzhou",
        "cos_protocol": "https",
        "home_dir": f"/home/user{n}",
        "ftp_login_user_name": f"user{n}",
        "ftp_login_user_password": f"{PASSWORD}{n}",
        "authority": "RW",
        "delete_enable": "true",
    }
    keys.update(overrides)
    lines = [f"[COS_ACCOUNT_{n}]"]
    lines += [f"{key} = {value}" for key, value in keys.items() if value != ""]
    return "\n".join(lines) + "\n"


def v5(*sections: str, network: str = "listen_port = 2121\n") -> str:
    return "\n".join(sections) + "\n[NETWORK]\n" + network


def assert_one_line_error(
    error: ConfigError, path: Path, section: str, key: str | None
) -> None:
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{path}: [{section}]")
    if key is not None:
        assert f"[{section}] {key}:" in message
    assert "expected" in message
    for secret in (SECRET_KEY, TOKEN, PASSWORD):
        assert secret not in message
    assert (error.path, error.section, error.key) == (str(path), section, key)
