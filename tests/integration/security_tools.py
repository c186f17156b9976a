"""Credentials for the security tests, made with the standard library and the openssl
command only (no nk or nsc tool, no internet):

- ``make_tls``: a CA, a server certificate for 127.0.0.1 (SAN IP:127.0.0.1), one for
  another address, and a client certificate, as PEM files.
- ``NKey``: an Ed25519 nkey (user, account or operator) with its seed text and public key;
  openssl derives the public key and signs.
- ``operator_setup``: nats-server operator mode (memory resolver) with a JetStream account
  and the .creds file of one of its users, JWTs signed as nsc would sign them.
"""

import base64
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

PREFIX = {"seed": 18 << 3, "operator": 14 << 3, "account": 0, "user": 20 << 3}
_ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")


def _crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _encode(raw):
    crc = _crc16(raw)
    return base64.b32encode(raw + bytes([crc & 0xFF, crc >> 8])).decode().rstrip("=")


class NKey:
    def __init__(self, kind, workdir):
        self.kind = kind
        self.raw_seed = os.urandom(32)
        self.der = Path(workdir) / f"nkey-{kind}-{os.getpid()}-{id(self)}.der"
        self.der.write_bytes(_ED25519_PKCS8 + self.raw_seed)
        self.der.chmod(0o600)
        out = subprocess.run(["openssl", "pkey", "-inform", "DER", "-in", str(self.der),
                              "-pubout", "-outform", "DER"], capture_output=True, check=True)
        self.raw_public = out.stdout[-32:]
        self.public = _encode(bytes([PREFIX[kind]]) + self.raw_public)
        p = PREFIX[kind]
        self.seed = _encode(bytes([PREFIX["seed"] | (p >> 5), (p & 31) << 3]) + self.raw_seed)

    def sign(self, data):
        src = self.der.with_suffix(".msg")
        src.write_bytes(data)
        out = subprocess.run(["openssl", "pkeyutl", "-sign", "-inkey", str(self.der),
                              "-keyform", "DER", "-rawin", "-in", str(src)],
                             capture_output=True, check=True)
        return out.stdout


def _b64(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt(issuer, subject_public, name, nats):
    claims = {"jti": "", "iat": int(time.time()), "iss": issuer.public, "name": name,
              "sub": subject_public, "nats": dict(nats, version=2)}
    claims["jti"] = base64.b32encode(hashlib.sha256(
        json.dumps(claims, separators=(",", ":")).encode()).digest()).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = issuer.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{_b64(sig)}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
             "wildcards": True, "conn": -1, "leaf": -1}


def operator_setup(workdir):
    """(server config text, creds text of a user of a JetStream-enabled account)."""
    op = NKey("operator", workdir)
    sys_acc, acc, user = NKey("account", workdir), NKey("account", workdir), NKey("user", workdir)
    op_jwt = jwt(op, op.public, "knr-op", {"type": "operator", "system_account": sys_acc.public})
    sys_jwt = jwt(op, sys_acc.public, "SYS", {"type": "account", "limits": UNLIMITED})
    acc_jwt = jwt(op, acc.public, "KNR", {"type": "account", "limits": dict(
        UNLIMITED, mem_storage=-1, disk_storage=-1, streams=-1, consumer=-1)})
    user_jwt = jwt(acc, user.public, "relay", {"type": "user", "pub": {}, "sub": {},
                                               "subs": -1, "data": -1, "payload": -1})
    conf = (f'operator: "{op_jwt}"\nsystem_account: {sys_acc.public}\nresolver: MEMORY\n'
            f'resolver_preload: {{\n  {sys_acc.public}: "{sys_jwt}"\n  {acc.public}: "{acc_jwt}"\n}}\n')
    creds = ("-----BEGIN NATS USER JWT-----\n" + user_jwt + "\n------END NATS USER JWT------\n\n"
             "************************* IMPORTANT *************************\n"
             "NKEY Seed printed below can be used to sign and prove identity.\n"
             "NKEYs are sensitive and should be treated as secrets.\n\n"
             "-----BEGIN USER NKEY SEED-----\n" + user.seed + "\n------END USER NKEY SEED------\n\n"
             "*************************************************************\n")
    return conf, creds, user


def _openssl(*args, cwd):
    proc = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(map(str, args))}: {proc.stderr.decode()}")


def make_tls(workdir):
    """Write ca.pem/.key, server.pem/.key (127.0.0.1), elsewhere.pem/.key (a server
    certificate for 10.9.8.7 only), client.pem/.key into workdir; returns workdir (Path)."""
    d = Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=knr test CA", cwd=d)
    exts = {"server": "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            "elsewhere": "subjectAltName=IP:10.9.8.7\nextendedKeyUsage=serverAuth\n",
            "client": "extendedKeyUsage=clientAuth\n"}
    for name, ext in exts.items():
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
                 f"{name}.ext", cwd=d)
    for key in d.glob("*.key"):
        key.chmod(0o600)
    return d
