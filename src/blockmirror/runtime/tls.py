"""Optional TLS for the replication link (stdlib `ssl`).

Both nodes present a certificate (`--tls-cert`, `--tls-key`); with
`--tls-ca` a node also verifies the peer's certificate chain against that CA
(the secondary then requires a client certificate). Hostnames are not
checked: the CA is the pair's own, and the pair secret still authenticates
the peer inside the TLS channel. Without `--tls-ca` TLS only encrypts (a
passive eavesdropper learns nothing; an active man in the middle is not
stopped by TLS, only by the secret's HMAC handshake, which does not cover
the frames that follow).

Loading problems are `ConfigError`s with a hint, raised before the daemon
serves anything; handshake failures are explained with `explain()`.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass

from blockmirror.errors import ConfigError

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_SSL_LOCATION = re.compile(r"\s*\(_ssl\.c:\d+\)")


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    ca: str | None


def files_from_args(args) -> TlsFiles | None:
    """`--tls-cert/--tls-key/--tls-ca` (or the same keys in --config); None
    when TLS is off. Partial settings are errors."""
    cert, key, ca = getattr(args, "tls_cert", None), getattr(args, "tls_key", None), getattr(args, "tls_ca", None)
    if not (cert or key or ca):
        return None
    if not cert or not key:
        given = "--tls-cert" if cert else "--tls-key" if key else "--tls-ca"
        raise ConfigError(f"{given} needs both --tls-cert and --tls-key",
                          hint="give this node's certificate and its private key: --tls-cert FILE --tls-key FILE "
                               "(and --tls-ca FILE to verify the peer)")
    return TlsFiles(cert, key, ca)


def _read(path: str, what: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist", hint=f"give an existing PEM file with {flag} FILE") \
            from None
    except IsADirectoryError:
        raise ConfigError(f"{what} file {path} is a directory", hint=f"give a PEM file with {flag} FILE") from None
    except PermissionError:
        raise ConfigError(f"{what} file {path} is not readable",
                          hint="make it readable by the user running blockmirror (chmod, chown)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None


def _load(ctx: ssl.SSLContext, files: TlsFiles) -> None:
    cert = _read(files.cert, "TLS certificate", "--tls-cert")
    if _PEM_CERT not in cert:
        raise ConfigError(f"TLS certificate file {files.cert} holds no PEM certificate",
                          hint="give a PEM file that starts with -----BEGIN CERTIFICATE----- as --tls-cert")
    key = _read(files.key, "TLS key", "--tls-key")
    if b"PRIVATE KEY-----" not in key:
        raise ConfigError(f"TLS key file {files.key} holds no PEM private key",
                          hint="give the certificate's private key (-----BEGIN PRIVATE KEY-----) as --tls-key")
    if b"ENCRYPTED" in key:
        raise ConfigError(f"TLS key file {files.key} is encrypted with a passphrase",
                          hint=f"give an unencrypted key (openssl pkey -in {files.key} -out KEY), mode 0600")

    def no_password():
        raise ValueError("no passphrase")
    try:
        ctx.load_cert_chain(files.cert, files.key, password=no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(f"TLS key {files.key} does not belong to the certificate {files.cert}",
                              hint="give the private key the certificate was issued for") from None
        raise ConfigError(f"cannot load TLS certificate {files.cert} with key {files.key}: {reason(exc)}",
                          hint="give PEM files made for this node (openssl x509 -in FILE -noout -text "
                               "shows a certificate)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load TLS certificate {files.cert} with key {files.key}: {exc}") from None
    if files.ca is not None:
        ca = _read(files.ca, "TLS CA", "--tls-ca")
        if _PEM_CERT not in ca:
            raise ConfigError(f"TLS CA file {files.ca} holds no PEM certificate",
                              hint="give the PEM certificate of the CA that signed the peer's certificate as --tls-ca")
        try:
            ctx.load_verify_locations(cafile=files.ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load TLS CA file {files.ca}: {reason(exc)}",
                              hint="give the PEM certificate of the CA that signed the peer's certificate") from None


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The secondary's side: with a CA, a client certificate is required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, files)
    ctx.verify_mode = ssl.CERT_REQUIRED if files.ca else ssl.CERT_NONE
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The primary's side: presents its certificate; with a CA, verifies
    the secondary's chain (not its hostname: see the module docstring)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _load(ctx, files)
    if files.ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def reason(exc: BaseException) -> str:
    text = str(getattr(exc, "strerror", None) or exc) if isinstance(exc, OSError) else str(exc)
    return _SSL_LOCATION.sub("", text)


def explain(exc: BaseException, peer: str) -> str:
    """A failed TLS handshake or TLS-level error, with what to do; `peer`
    names the other node ("the primary", "the secondary")."""
    text = reason(exc)
    upper = text.upper()
    if "CERTIFICATE_VERIFY_FAILED" in upper:
        hint = (f"{peer}'s certificate is not signed by the CA given with --tls-ca (or has expired): "
                f"issue {peer}'s --tls-cert from that CA")
    elif any(s in upper for s in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "CERTIFICATE_UNKNOWN",
                                  "DECRYPT_ERROR", "PEER_DID_NOT_RETURN_A_CERTIFICATE")):
        hint = (f"{peer} does not accept this node's certificate: issue this node's --tls-cert from the CA "
                f"{peer} trusts (its --tls-ca)")
    elif any(s in upper for s in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST",
                                  "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL", "UNEXPECTED_EOF",
                                  "EOF OCCURRED")):
        hint = f"{peer} does not speak TLS: give both nodes --tls-cert and --tls-key, or neither"
    else:
        hint = "check that both nodes use --tls-cert/--tls-key with certificates from the CA of --tls-ca"
    return f"TLS handshake failed: {text} (try: {hint})"


def describe(transport) -> dict | None:
    """TLS facts of an established link's transport, for status."""
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if obj is None:
        return None
    cipher = obj.cipher()
    peer = transport.get_extra_info("peercert") or {}
    subject = ", ".join("=".join(kv) for rdn in peer.get("subject", ()) for kv in rdn) or None
    return {"version": obj.version(), "cipher": cipher[0] if cipher else None, "peer_subject": subject}

